"""wit's tests, in folders that mirror the source tree (wit_builder/ and trainer/)."""
