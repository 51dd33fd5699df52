"""Data queries (REDCap's data resolution workflow, OpenClinica's discrepancy notes): raised by a
manager or a monitor on a record or one field, or by the system's checks; answered by the site
role that enters that data (with the correction, if one is made); closed or reopened by the
raiser's role. A query about a session, an event or an adverse event is never shown to an
assessor, nor is its existence."""
