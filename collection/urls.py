"""Page URLs; each page module under collection/views lists its own."""
from collection.views import dashboard, exports, review, runs, seeds

urlpatterns = dashboard.urlpatterns + seeds.urlpatterns + runs.urlpatterns + review.urlpatterns + exports.urlpatterns
