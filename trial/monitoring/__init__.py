"""Source-data verification: a monitor marks records verified against their source at its
sites; a later change of a record clears its mark (trial.dataquality)."""
