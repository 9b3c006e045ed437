//! Workloads shared by `accellm engine-bench`, `accellm calibrate` and the criterion bench.
