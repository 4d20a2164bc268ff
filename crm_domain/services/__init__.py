"""Domain services: take a Session and plain values, never commit. One subpackage per
capability (docs/ARCHITECTURE.md): `delivery` at the bottom, `records` on it, and `mailing`,
`transfer` and `reporting` on both, independent of each other."""
