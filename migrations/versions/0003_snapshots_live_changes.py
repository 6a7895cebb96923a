"""availability, the live change log, background admin jobs, edit markers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.add_column(sa.Column("availability", sa.String(32), nullable=False, server_default="in_stock"))
        batch.create_index("ix_products_availability", ["availability"])
    with op.batch_alter_table("index_versions") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="build"))
    op.create_table(
        "catalog_changes",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.String(256), nullable=False),
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("record", sa.Text(), nullable=True),
        sa.Column("vectors", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_catalog_changes_product_id", "catalog_changes", ["product_id"])
    op.create_table(
        "admin_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_admin_jobs_status", "admin_jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_admin_jobs_status", "admin_jobs")
    op.drop_table("admin_jobs")
    op.drop_index("ix_catalog_changes_product_id", "catalog_changes")
    op.drop_table("catalog_changes")
    with op.batch_alter_table("index_versions") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("products") as batch:
        batch.drop_index("ix_products_availability")
        batch.drop_column("availability")
