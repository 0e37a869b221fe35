"""The ``kluis`` command line: ``kluis <noun> <verb>``, one module per noun."""
