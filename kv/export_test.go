package kv

// DecodeCanonicalForTest exposes the fast path to the fuzz target.
var DecodeCanonicalForTest = decodeCanonical
