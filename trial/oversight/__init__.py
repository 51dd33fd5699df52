"""The investigator's oversight and the site's close-out: casebook sign-offs at the protocol's
milestones (invalidated by any later change to the data they covered), the casebook PDF, the site
archive for the investigator file, and the audit trail export."""
