"""Engines run a shard's WorkList: `local` (DataLoader + one ORT session) and `ray` (Ray Data).

Both take the same plan, decode through `skutag.images`, write the same schema through
`batchrun.writer` and commit the same units under the same names.
"""
