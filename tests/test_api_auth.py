"""API: getting, using and revoking a token; how anonymous and role-less callers are answered."""
from rest_framework.authtoken.models import Token


def test_it_gives_a_token_for_username_and_password(client, reviewer):
    response = client.post("/api/auth/token/", {"username": "rita", "password": "pw-rita"},
                           content_type="application/json")
    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=reviewer).key}


def test_it_refuses_a_wrong_password_naming_no_token(client, reviewer):
    response = client.post("/api/auth/token/", {"username": "rita", "password": "wrong"},
                           content_type="application/json")
    assert response.status_code == 400
    assert "token" not in response.json()
    assert not Token.objects.exists()


def test_it_names_missing_credentials(client, db):
    response = client.post("/api/auth/token/", {}, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()) == {"username", "password"}


def test_it_authenticates_with_the_token_header(client, reviewer, rater):
    key = Token.objects.create(user=reviewer).key
    assert client.get("/api/seed-sets/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    rater_key = Token.objects.create(user=rater).key
    assert client.get("/api/seed-sets/", HTTP_AUTHORIZATION=f"Token {rater_key}").status_code == 403
    assert client.get("/api/seed-sets/", HTTP_AUTHORIZATION="Token not-a-real-token").status_code == 401


def test_it_revokes_only_the_callers_token(client, reviewer, reviewer2):
    key = Token.objects.create(user=reviewer).key
    other = Token.objects.create(user=reviewer2).key
    assert client.delete("/api/auth/token/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 204
    assert client.get("/api/seed-sets/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 401
    assert list(Token.objects.values_list("key", flat=True)) == [other]


def test_it_asks_anonymous_callers_to_authenticate_before_revoking(client, reviewer):
    Token.objects.create(user=reviewer)
    assert client.delete("/api/auth/token/").status_code == 401
    assert Token.objects.count() == 1


def test_it_answers_the_api_root_only_to_signed_in_users(client, as_reviewer):
    assert client.get("/api/").status_code == 401
    assert "dialogues" in as_reviewer.get("/api/").json()


def test_it_serves_the_schema_and_docs(client, as_reviewer):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/dialogues/", "/api/dialogues/{id}/review/", "/api/exports/{id}/download/",
            "/api/auth/token/"} <= set(paths)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"/static/drf_spectacular_sidecar/swagger-ui-dist/" in docs.content  # served here, works offline
