"""Interim looks for an independent data monitoring committee: data cuts (consistent snapshots of
the live data, built like a lock's bundle, nothing locked), the open (pooled) and closed (by arm)
reports with the interim primary analysis against the protocol's group-sequential boundary, and the
committee's e-signed recommendation; and the de-identified sharing bundle of a locked, unblinded
trial."""
