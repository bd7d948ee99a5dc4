/*
 * Chat templates against jinja2 (tests/fixtures/chat_templates.json, made by
 * scripts/ref/make_tokenizer_fixtures.py): the default model's own template and two of other families must be
 * recognised, give the template's default system prompt, and render every conversation exactly as jinja2
 * does; unrecognised templates fail with a message that names them.
 */
#include "testutil.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

/* The template text: the GGUF's own for the "gguf" entry (it must equal the fixture's copy). */
static char *template_text(const json_t *entry, const gguf_file *f) {
    const char *name = json_string_value(json_object_get(entry, "name"));
    const char *fx = json_string_value(json_object_get(entry, "template"));
    if (strcmp(name, "gguf") != 0) return strdup(fx);
    dsa_str s;
    CHECK(gguf_get_str(f, "tokenizer.chat_template", &s) == 0, "model has no chat template");
    char *t = malloc(s.len + 1);
    if (!t) return NULL;
    memcpy(t, s.ptr, s.len);
    t[s.len] = 0;
    CHECK(strcmp(t, fx) == 0, "the model's template differs from the fixture's copy: regenerate the fixture");
    return t;
}

static void check_case(const dsa_chat_template *ct, const char *name, size_t idx, const json_t *c) {
    const json_t *msgs = json_object_get(c, "messages");
    int n = (int)json_array_size(msgs);
    dsa_chat_msg *m = calloc(n ? (size_t)n : 1, sizeof *m);
    CHECK(m != NULL, "out of memory");
    if (!m) return;
    for (int i = 0; i < n; i++) {
        const json_t *jm = json_array_get(msgs, (size_t)i);
        m[i].role = json_string_value(json_object_get(jm, "role"));
        m[i].content = json_string_value(json_object_get(jm, "content"));
    }
    int agp = json_is_true(json_object_get(c, "add_generation_prompt"));
    const char *want = json_string_value(json_object_get(c, "rendered"));
    char *got = dsa_chat_render(ct, m, n, agp);
    CHECK(got && want && strcmp(got, want) == 0, "%s case %zu (%d messages, agp %d) differs:\n--- got\n%s\n--- want\n%s",
          name, idx, n, agp, got ? got : "(null)", want ? want : "(null)");
    free(got);
    free(m);
}

static void test_templates(const json_t *fx, const gguf_file *f) {
    size_t i;
    json_t *e;
    CHECK(json_array_size(json_object_get(fx, "templates")) >= 3, "fixture has too few templates");
    json_array_foreach(json_object_get(fx, "templates"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char *tmpl = template_text(e, f);
        char err[256];
        dsa_chat_template ct;
        CHECK(tmpl != NULL, "no template");
        if (!tmpl) continue;
        int rc = dsa_chat_detect(tmpl, strlen(tmpl), &ct, err, sizeof err);
        CHECK(rc == 0, "%s: %s", name, err);
        if (rc) {
            free(tmpl);
            continue;
        }
        const char *kind = json_string_value(json_object_get(e, "kind"));
        CHECK(strcmp(dsa_chat_kind_name(ct.kind), kind) == 0, "%s: kind %s, want %s", name,
              dsa_chat_kind_name(ct.kind), kind);
        const char *sys = json_string_value(json_object_get(e, "default_system")); /* NULL for json null */
        CHECK(sys ? ct.default_system && strcmp(ct.default_system, sys) == 0 : ct.default_system == NULL,
              "%s: default system prompt '%s', want '%s'", name, ct.default_system ? ct.default_system : "(none)",
              sys ? sys : "(none)");
        size_t k;
        json_t *c;
        json_array_foreach(json_object_get(e, "cases"), k, c) check_case(&ct, name, k, c);
        printf("template %-14s: %s, %zu renderings\n", name, dsa_chat_kind_name(ct.kind),
               json_array_size(json_object_get(e, "cases")));
        dsa_chat_template_free(&ct);
        free(tmpl);
    }
}

static void test_unrecognised(const json_t *fx) {
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(fx, "unrecognised"), i, e) {
        const char *t = json_string_value(e);
        char err[256] = "";
        dsa_chat_template ct;
        CHECK(dsa_chat_detect(t, strlen(t), &ct, err, sizeof err) == -1, "unrecognised template %zu accepted", i);
        CHECK(strncmp(err, "unrecognised chat template (", 28) == 0 && !strchr(err, '\n'), "message: %s", err);
        /* the message names the template by its first characters (newlines shown as spaces) */
        if (*t) CHECK(strncmp(err + 28, t, 10) == 0, "message does not quote the template: %s", err);
        else CHECK(strstr(err, "empty") != NULL, "message for an empty template: %s", err);
    }
    char err[256];
    dsa_chat_template ct;
    CHECK(dsa_chat_detect(NULL, 0, &ct, err, sizeof err) == -1, "NULL template accepted");
}

/* The rendered default prompt tokenises with the control tokens in place. */
static void test_prompt_tokens(const gguf_file *f) {
    char err[256];
    dsa_tokenizer *tok;
    dsa_chat_template ct;
    dsa_str s;
    if (dsa_tok_load(f, &tok, err, sizeof err) || gguf_get_str(f, "tokenizer.chat_template", &s)) {
        CHECK(0, "load: %s", err);
        return;
    }
    CHECK(dsa_chat_detect(s.ptr, s.len, &ct, err, sizeof err) == 0, "detect: %s", err);
    dsa_chat_msg m[] = {{"user", "Hi"}};
    char *p = dsa_chat_render(&ct, m, 1, 1);
    dsa_ids ids = {0};
    CHECK(p && dsa_tok_encode(tok, p, strlen(p), 1, &ids) == 0, "render/encode");
    int im_start = dsa_tok_lookup(tok, "<|im_start|>"), im_end = dsa_tok_lookup(tok, "<|im_end|>");
    int starts = 0, ends = 0;
    for (size_t i = 0; i < ids.n; i++) {
        starts += ids.ids[i] == im_start;
        ends += ids.ids[i] == im_end;
    }
    CHECK(ids.n > 0 && ids.ids[0] == im_start && starts == 3 && ends == 2, "%d <|im_start|>, %d <|im_end|>", starts,
          ends);
    dsa_ids_free(&ids);
    free(p);
    dsa_chat_template_free(&ct);
    dsa_tok_free(tok);
}

int main(void) {
    char err[256];
    gguf_file *f;
    if (gguf_open(tu_model_path(), &f, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    json_t *fx = tu_load_json("chat_templates.json");
    test_templates(fx, f);
    test_unrecognised(fx);
    test_prompt_tokens(f);
    json_decref(fx);
    gguf_close(f);
    return tu_finish("test_chat");
}
