//! Transparent interception: the kernel programs, their pins, and interception records.
