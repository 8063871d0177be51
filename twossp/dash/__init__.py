"""Reading the result database: declared views (``views``) run built-in queries (``queries``) or
SQL into frames (``frame``), shown as text (``render``) or charts (``charts``); and the live
display of a running sweep (``live``)."""
