"""Pages for this part arrive with their work; see collection/urls.py."""
urlpatterns = []
