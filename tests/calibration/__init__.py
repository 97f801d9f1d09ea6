"""Tests of the framework-free calibration core."""
