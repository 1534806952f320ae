"""Roles: admin (everything, Django admin), reviewer (review and export dialogues), rater (pairwise rating only).

A role is a Django group of the same name; superusers count as admins. Pages use the `role_required`
decorator, the API the `HasRole` permission classes below.
"""
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

ADMIN = "admin"
REVIEWER = "reviewer"
RATER = "rater"
ALL = (ADMIN, REVIEWER, RATER)

# Who may do what a role allows: an admin may do everything.
IMPLIED_BY = {ADMIN: {ADMIN}, REVIEWER: {ADMIN, REVIEWER}, RATER: {ADMIN, RATER}}


def roles_of(user):
    if not user.is_authenticated or not user.is_active:
        return set()
    cached = getattr(user, "_baize_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ALL).values_list("name", flat=True))
        if user.is_superuser:
            cached.add(ADMIN)
        user._baize_roles = cached
    return cached


def has_role(user, role):
    return bool(roles_of(user) & IMPLIED_BY[role])


def role_required(role):
    """Page decorator: anonymous users go to the login page, signed-in users without the role get 403."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class HasRole(BasePermission):
    role = None
    message = "Your account does not have the role this endpoint needs."

    def has_permission(self, request, view):
        return has_role(request.user, self.role)


class IsReviewer(HasRole):
    role = REVIEWER


class IsAdmin(HasRole):
    role = ADMIN


class IsRater(HasRole):
    role = RATER


def context(request):
    """Template context: which navigation a signed-in user sees."""
    user = getattr(request, "user", None)
    if user is None:
        return {}
    return {"user_roles": roles_of(user)}
