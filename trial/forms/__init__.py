"""WTForms forms of the web pages, one module per area."""
