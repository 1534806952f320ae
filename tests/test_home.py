"""The home page: who may see the workspace summary."""


def test_it_sends_anonymous_users_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_it_shows_the_workspace_to_reviewers(as_reviewer):
    response = as_reviewer.get("/")
    assert response.status_code == 200
    assert b"Generation runs" in response.content


def test_it_hides_the_workspace_from_raters(as_rater):
    response = as_rater.get("/")
    assert response.status_code == 200
    assert b"Generation runs" not in response.content
    assert b"no review role" in response.content


def test_it_shows_the_login_page(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"Log in" in response.content
