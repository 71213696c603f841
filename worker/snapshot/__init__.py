"""Consistent snapshots of both stores: backup, restore and export."""
