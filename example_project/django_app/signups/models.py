"""Signups, and the one place that creates them (and sends the event)."""

from __future__ import annotations

from django.db import models, transaction

SIGNED_UP = "signups/user.signed-up"


class Signup(models.Model):
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    welcomed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.email


def sign_up(email: str) -> Signup:
    """Create a signup; once it is committed, send the event that welcomes it."""
    from example_project.django_app.celery import fanout

    with transaction.atomic():
        signup = Signup.objects.create(email=email)
        # On commit, not now: a worker must find the row, and a rolled-back signup must
        # start nothing. The event id makes a re-sent event start no second run.
        transaction.on_commit(lambda: fanout.send({
            "name": SIGNED_UP, "id": f"signup-{signup.pk}",
            "data": {"signup_id": signup.pk}}))
    return signup
