"""HTTP routers, one module per concept; ``kluis.vault.app`` mounts them under ``/api/v1``."""
