"""Pages for the people who use the tags: the nightly change report and the review page (`skutag report`,
`skutag review`). They read a `skutag run` OUT through the one reader and write only under OUT's
`_report/` and `_review/`."""
