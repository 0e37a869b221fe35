"""Machines keep the SHA-256 of their key set's registration proof.

The key fingerprint is public, so re-registration now also checks a proof only the holder
of the keys can compute (MasterKeys.registration_proof); the vault keeps its hash.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_proof_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("key_proof_hash")
