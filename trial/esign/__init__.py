"""Electronic signatures (21 CFR 11.50, 11.200): printed name, UTC time and meaning, given with
the signer's password again. Locks, unblinding and countersigned role grants are signed."""
