"""Offline data generators: pure numpy (+ Pillow), importing nothing from lk_study.tasks."""
