"""Extensions: versioned packages the vault serves and the agent installs on first use.

The only one so far is ``snapshot`` (disk snapshots of machines and VMs); see its
package docstring for the surface the agent calls.
"""
