//! Whole-gateway tests: the real `portcullis` binary on loopback, driven over HTTP.
