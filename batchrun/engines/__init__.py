"""Engines run a shard's WorkList: `base` (what every engine shares), `local`, `ray`.

`base` holds the `Engine` protocol, `Stats`, `committing` and the `ENGINES` registry;
`local` runs supervised DataLoader workers and one ORT session through the stage threads of
`pipeline`; `ray` runs Ray Data with the stages of `ray_stages` sized by `ray_resources`.
"""
