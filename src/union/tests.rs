//! Unit tests of the union layer on temporary directories.
