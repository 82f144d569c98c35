"""Placeholder: filled in by the "Close the loop" work."""

from fastapi import APIRouter

router = APIRouter()
