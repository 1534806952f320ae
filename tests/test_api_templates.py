"""API: self-chat templates — list, and new versions that never change the versions runs already used."""
import pytest

from collection.models import SelfChatTemplate
from tests.factories import make_template

PROMPT = "Chat about '{topic}'. Use [|Human|] and [|AI|]. Braces like {this} are kept as they are.\n"


def post(client, data):
    return client.post("/api/templates/", data, content_type="application/json")


@pytest.fixture
def template(db):
    return make_template(name="baize")


def test_it_refuses_anonymous_raters_and_outsiders(client, as_rater, as_outsider, template):
    for url in ("/api/templates/", f"/api/templates/{template.pk}/"):
        assert client.get(url).status_code == 401
        assert as_rater.get(url).status_code == 403
        assert as_outsider.get(url).status_code == 403
    assert post(client, {"name": "baize", "prompt": PROMPT}).status_code == 401
    assert post(as_rater, {"name": "baize", "prompt": PROMPT}).status_code == 403
    assert post(as_outsider, {"name": "baize", "prompt": PROMPT}).status_code == 403
    assert SelfChatTemplate.objects.count() == 1


def test_it_lists_templates_newest_version_first(as_reviewer, template):
    SelfChatTemplate.create_version(name="baize", prompt=PROMPT)
    rows = as_reviewer.get("/api/templates/?name=baize").json()["results"]
    assert [r["version"] for r in rows] == [2, 1]
    assert as_reviewer.get(f"/api/templates/{template.pk}/").json()["prompt"] == template.prompt


def test_it_saves_an_edit_as_the_next_version(as_reviewer, template):
    response = post(as_reviewer, {"name": "baize", "prompt": PROMPT, "version": 7})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["version"], body["prompt"], body["created_by"]) == (2, PROMPT, "rita")
    template.refresh_from_db()
    assert template.version == 1 and template.prompt != PROMPT
    assert post(as_reviewer, {"name": "new", "prompt": PROMPT}).json()["version"] == 1


def test_it_creates_a_turns_template(as_admin, db):
    response = post(as_admin, {"name": "v2", "mode": "turns", "prompt": "Topic {topic}\n{transcript}\n[|Human|]",
                               "assistant_system_prompt": "Be brief."})
    assert response.status_code == 201, response.json()
    assert SelfChatTemplate.objects.get(name="v2").assistant_system_prompt == "Be brief."


@pytest.mark.parametrize("data,field", [
    ({"name": "x", "prompt": "no placeholder"}, "prompt"),
    ({"name": "x", "mode": "turns", "prompt": "{topic} only"}, "prompt"),
    ({"name": "x", "mode": "dialogue", "prompt": PROMPT}, "mode"),
    ({"prompt": PROMPT}, "name"),
])
def test_it_names_the_field_of_a_bad_template(as_reviewer, db, data, field):
    response = post(as_reviewer, data)
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not SelfChatTemplate.objects.exists()


def test_it_has_no_way_to_change_or_delete_a_version(as_admin, template):
    url = f"/api/templates/{template.pk}/"
    assert as_admin.patch(url, {"prompt": PROMPT}, content_type="application/json").status_code == 405
    assert as_admin.delete(url).status_code == 405
    assert SelfChatTemplate.objects.get().prompt == template.prompt
