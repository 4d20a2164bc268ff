"""CSV imports: jobs, their uploaded files and per-row errors; the import row key on
contacts and deals; contacts looked up by lower(email)

Revision ID: 0008_imports
Revises: 0006_webhooks
Create Date: 2026-11-23 20:39:38.471441
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_imports"
down_revision: str | None = "0006_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "kind",
            sa.Enum(
                "contacts",
                "deals",
                name="import_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "on_duplicate",
            sa.Enum(
                "skip",
                "update",
                name="import_on_duplicate",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "running",
                "done",
                "failed",
                name="import_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("rows_total", sa.Integer(), nullable=False),
        sa.Column("rows_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_row", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error_rows", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_import_jobs_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_import_jobs_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_jobs")),
    )
    op.create_index("ix_import_jobs_org_id", "import_jobs", ["organization_id", "id"], unique=False)
    op.create_index(
        "ix_import_jobs_unfinished",
        "import_jobs",
        ["status", "heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_table(
        "import_files",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["import_jobs.id"],
            name=op.f("fk_import_files_job_id_import_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_import_files")),
    )
    # Stored uncompressed, out of line: the worker reads the file in slices (substring), which
    # PostgreSQL then serves without decompressing everything before each slice.
    op.execute("ALTER TABLE import_files ALTER COLUMN content SET STORAGE EXTERNAL")
    op.create_table(
        "import_row_errors",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["import_jobs.id"],
            name=op.f("fk_import_row_errors_job_id_import_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_row_errors")),
    )
    op.create_index(
        "ix_import_row_errors_job_row", "import_row_errors", ["job_id", "row", "id"], unique=False
    )
    op.add_column("contacts", sa.Column("import_job_id", sa.Integer(), nullable=True))
    op.add_column("contacts", sa.Column("import_row", sa.Integer(), nullable=True))
    op.create_index(
        "ix_contacts_org_lower_email",
        "contacts",
        ["organization_id", sa.literal_column("lower(email)")],
        unique=False,
    )
    op.create_index(
        "uq_contacts_import_row",
        "contacts",
        ["import_job_id", "import_row"],
        unique=True,
        postgresql_where=sa.text("import_job_id IS NOT NULL"),
    )
    op.add_column("deals", sa.Column("import_job_id", sa.Integer(), nullable=True))
    op.add_column("deals", sa.Column("import_row", sa.Integer(), nullable=True))
    op.create_index(
        "uq_deals_import_row",
        "deals",
        ["import_job_id", "import_row"],
        unique=True,
        postgresql_where=sa.text("import_job_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_deals_import_row",
        table_name="deals",
        postgresql_where=sa.text("import_job_id IS NOT NULL"),
    )
    op.drop_column("deals", "import_row")
    op.drop_column("deals", "import_job_id")
    op.drop_index(
        "uq_contacts_import_row",
        table_name="contacts",
        postgresql_where=sa.text("import_job_id IS NOT NULL"),
    )
    op.drop_index("ix_contacts_org_lower_email", table_name="contacts")
    op.drop_column("contacts", "import_row")
    op.drop_column("contacts", "import_job_id")
    op.drop_index("ix_import_row_errors_job_row", table_name="import_row_errors")
    op.drop_table("import_row_errors")
    op.drop_table("import_files")
    op.drop_index(
        "ix_import_jobs_unfinished",
        table_name="import_jobs",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.drop_index("ix_import_jobs_org_id", table_name="import_jobs")
    op.drop_table("import_jobs")
