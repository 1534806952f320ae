"""Who may call which endpoint: reviewers (and admins) use the API; some writes are for admins only.

Anonymous callers get 401 (the token scheme is announced), signed-in users without the role get 403.
"""
from rest_framework.permissions import SAFE_METHODS, BasePermission

from baize_eval import roles


class ReviewerReadsAdminWrites(BasePermission):
    """Endpoints and prices: reviewers need to see them to start runs; changing them is an admin's job."""

    message = "Reviewers may read this; changing it needs the admin role."

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS:
            return roles.has_role(request.user, roles.REVIEWER)
        return roles.has_role(request.user, roles.ADMIN)
