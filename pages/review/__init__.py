"""`skutag review OUT`: the review queue (`queue`) served as a local page (`server`, a Starlette app)."""
