"""Initial schema: users, tokens, machines, items, policies, jobs, points, packs, blobs, alerts, leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("blob_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("pack_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("type", sa.SmallInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("raw_length", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "blob_id", "pack_id", name=op.f("pk_blobs")),
    )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.create_index("ix_blobs_machine_pack", ["machine_id", "pack_id"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("acquired_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "machines",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("os", sa.String(length=200), nullable=False),
        sa.Column("agent_version", sa.String(length=50), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=128), nullable=False),
        sa.Column("registered_at", sa.DateTime(), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("agent_status", sa.String(length=40), nullable=True),
        sa.Column("extensions", sa.JSON(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machines")),
    )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_machines_hostname"), ["hostname"], unique=False)

    op.create_table(
        "policies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("retention", sa.JSON(), nullable=False),
        sa.Column("instant_rp_days", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policies")),
        sa.UniqueConstraint("name", name=op.f("uq_policies_name")),
    )
    op.create_table(
        "registration_secrets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registration_secrets")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_registration_secrets_secret_hash")),
    )
    with op.batch_alter_table("registration_secrets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registration_secrets_created_at"), ["created_at"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "vault_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_vault_meta")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("machine_id", sa.String(length=32), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_api_tokens_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)

    op.create_table(
        "gc_state",
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("sweeping", sa.Boolean(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("last_gc_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_gc_state_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_gc_state")),
    )
    op.create_table(
        "index_files",
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("index_id", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_index_files_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("machine_id", "index_id", name=op.f("pk_index_files")),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("policy_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_slot_at", sa.DateTime(), nullable=True),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("purge_after", sa.DateTime(), nullable=True),
        sa.Column("last_backup_at", sa.DateTime(), nullable=True),
        sa.Column("last_backup_status", sa.String(length=30), nullable=True),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], name=op.f("fk_items_machine_id_machines")),
        sa.ForeignKeyConstraint(["policy_id"], ["policies.id"], name=op.f("fk_items_policy_id_policies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
    )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_items_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_items_policy_id"), ["policy_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_items_state"), ["state"], unique=False)
        batch_op.create_index(
            "uq_items_machine_name",
            ["machine_id", "name"],
            unique=True,
            sqlite_where=sa.text("state != 'Deleted'"),
            postgresql_where=sa.text("state != 'Deleted'"),
        )

    op.create_table(
        "key_sets",
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_key_sets_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("machine_id", "key_id", name=op.f("pk_key_sets")),
    )
    op.create_table(
        "packs",
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("pack_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], name=op.f("fk_packs_machine_id_machines")),
        sa.PrimaryKeyConstraint("machine_id", "pack_id", name=op.f("pk_packs")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("item_id", sa.String(length=32), nullable=True),
        sa.Column("machine_id", sa.String(length=32), nullable=True),
        sa.Column("phase", sa.String(length=60), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("cancel_error", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(), nullable=True),
        sa.Column("retain_until", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_jobs_item_id_items")),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], name=op.f("fk_jobs_machine_id_machines")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_item_id"), ["item_id"], unique=False)
        batch_op.create_index("ix_jobs_machine_status", ["machine_id", "status"], unique=False)
        batch_op.create_index("ix_jobs_status_type", ["status", "type"], unique=False)
        batch_op.create_index(
            "uq_jobs_one_backup_per_item",
            ["item_id"],
            unique=True,
            sqlite_where=sa.text("type = 'Backup' AND status IN ('InProgress', 'Cancelling')"),
            postgresql_where=sa.text("type = 'Backup' AND status IN ('InProgress', 'Cancelling')"),
        )

    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=80), nullable=False),
        sa.Column("severity", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("machine_id", sa.String(length=32), nullable=True),
        sa.Column("item_id", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_alerts_item_id_items")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_alerts_job_id_jobs")),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], name=op.f("fk_alerts_machine_id_machines")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_status"), ["status"], unique=False)

    op.create_table(
        "recovery_points",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("item_id", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("time", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("header", sa.JSON(), nullable=False),
        sa.Column("refs_count", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("retain_until", sa.DateTime(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("expired_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_recovery_points_item_id_items")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_recovery_points_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_recovery_points_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_points")),
    )
    with op.batch_alter_table("recovery_points", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_recovery_points_item_id"), ["item_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_recovery_points_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_recovery_points_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("recovery_points", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recovery_points_state"))
        batch_op.drop_index(batch_op.f("ix_recovery_points_machine_id"))
        batch_op.drop_index(batch_op.f("ix_recovery_points_item_id"))

    op.drop_table("recovery_points")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_status"))
        batch_op.drop_index(batch_op.f("ix_alerts_created_at"))

    op.drop_table("alerts")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_jobs_one_backup_per_item",
            sqlite_where=sa.text("type = 'Backup' AND status IN ('InProgress', 'Cancelling')"),
            postgresql_where=sa.text("type = 'Backup' AND status IN ('InProgress', 'Cancelling')"),
        )
        batch_op.drop_index("ix_jobs_status_type")
        batch_op.drop_index("ix_jobs_machine_status")
        batch_op.drop_index(batch_op.f("ix_jobs_item_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_created_at"))

    op.drop_table("jobs")
    op.drop_table("packs")
    op.drop_table("key_sets")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_items_machine_name",
            sqlite_where=sa.text("state != 'Deleted'"),
            postgresql_where=sa.text("state != 'Deleted'"),
        )
        batch_op.drop_index(batch_op.f("ix_items_state"))
        batch_op.drop_index(batch_op.f("ix_items_policy_id"))
        batch_op.drop_index(batch_op.f("ix_items_machine_id"))

    op.drop_table("items")
    op.drop_table("index_files")
    op.drop_table("gc_state")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))
        batch_op.drop_index(batch_op.f("ix_api_tokens_machine_id"))

    op.drop_table("api_tokens")
    op.drop_table("vault_meta")
    op.drop_table("users")
    with op.batch_alter_table("registration_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registration_secrets_created_at"))

    op.drop_table("registration_secrets")
    op.drop_table("policies")
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machines_hostname"))

    op.drop_table("machines")
    op.drop_table("leases")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_blobs_machine_pack")

    op.drop_table("blobs")
