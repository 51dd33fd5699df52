"""Backups: `trial backup create | verify | restore` (trial.backup.service; the CLI in trial.cli.backup)."""
