//! Tests of the supervisor with scripted fake workers.
