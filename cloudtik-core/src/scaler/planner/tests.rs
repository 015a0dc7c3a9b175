//! Unit and property tests of the planner.
