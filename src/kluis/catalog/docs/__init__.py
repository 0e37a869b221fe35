"""Generators for the catalog's gettext files and its documents.

``python -m kluis.catalog.docs`` refreshes ``kluis.pot`` and the ``.po`` files from the
catalog, reports strings still to translate, and writes the troubleshooting guide in
every language, the seed mapping table and the coverage report into ``docs/``.
"""

from kluis.catalog.docs.generate import generate_docs, repo_root

__all__ = ["generate_docs", "repo_root"]
