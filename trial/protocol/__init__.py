"""The protocol is data: a TOML file, validated, versioned in the database."""
