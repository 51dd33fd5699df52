"""Record status grid and recruitment chart (arm-independent)."""
