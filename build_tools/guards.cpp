// Guards around llama.cpp's grammar and tokenizer: C++ exceptions it lets out of its C API are caught before they
// reach C (where they end the process through std::terminate), and a grammar whose parse stacks multiply is stopped.
// Declared for cffi in callbacks.cdef and helpers.c.
#include "llama.h"
#include "llama-grammar.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// Thrown by accept when a token leaves the grammar more parse stacks than its bound.
struct too_ambiguous : std::runtime_error {
    too_ambiguous() : std::runtime_error("too many parse stacks") {}
};

// llama.cpp's grammar sampler, with a bound on its parse stacks: at most max_stacks of them, and their number times
// their total depth at most max_stacks * 4096. An ambiguous grammar (a rule that repeats a rule that repeats itself,
// say) keeps every parse the text allows, and their number can grow exponentially with each character: one accept
// then runs for minutes. With the bound, the accept that passes it throws instead (and drops the stacks, so the
// grammar admits nothing more until a reset); each accept stays bounded, since one character multiplies the stacks
// by at most a factor fixed by the grammar.
struct guarded_grammar {
    const llama_vocab * vocab;
    std::string text;
    std::string root;
    size_t max_stacks;
    llama_grammar * grammar;
};

bool end_of_sequence(const llama_grammar_element * pos) {
    return pos->type == LLAMA_GRETYPE_END || pos->type == LLAMA_GRETYPE_ALT;
}

// How many distinct parse stacks llama.cpp's advance step (llama_grammar_advance_stack, followed here step for step)
// reaches from one stack, counted up to budget + 1. A rule that reaches itself through rules that may match nothing
// makes that number unbounded, and llama.cpp then loops until memory runs out. Such a loop pushes ever deeper stacks,
// so a stack deeper than budget / 4 counts as past the budget too, and work (stack elements copied, shared by the
// calls for one grammar) stops the count once it passes budget * 16384.
size_t advance_breadth(const llama_grammar_rules & rules, const llama_grammar_stack & start, size_t budget,
                       size_t & work) {
    std::vector<llama_grammar_stack> todo{start};
    std::set<llama_grammar_stack> seen;
    while (!todo.empty()) {
        llama_grammar_stack stack = std::move(todo.back());
        todo.pop_back();
        if (stack.size() > budget / 4 || work > budget * 16384) {
            return budget + 1;
        }
        if (!seen.insert(stack).second) {
            continue;
        }
        if (seen.size() > budget) {
            break;
        }
        if (stack.empty() || stack.back()->type != LLAMA_GRETYPE_RULE_REF) {
            continue;  // a character or token element: where advancing stops
        }
        const llama_grammar_element * pos = stack.back();
        const llama_grammar_element * alt = rules[pos->value].data();
        while (true) {
            llama_grammar_stack next(stack.begin(), stack.end() - 1);
            if (!end_of_sequence(pos + 1)) {
                next.push_back(pos + 1);
            }
            if (!end_of_sequence(alt)) {
                next.push_back(alt);
            }
            work += next.size();
            todo.push_back(std::move(next));
            while (!end_of_sequence(alt)) {
                alt++;
            }
            if (alt->type != LLAMA_GRETYPE_ALT) {
                break;
            }
            alt++;
        }
    }
    return seen.size();
}

// The most distinct stacks one advance reaches from any rule reference of the grammar (budget + 1 when past it), or
// -1 when the text does not parse or has no rule root. Every stack llama.cpp advances starts at such a reference.
long breadth(const llama_vocab * vocab, const char * text, const char * root, size_t budget) {
    llama_grammar_parser parser(vocab);
    if (!parser.parse(text) || parser.rules.empty() || parser.symbol_ids.find(root) == parser.symbol_ids.end()) {
        return -1;
    }
    size_t most = 0;
    size_t work = 0;
    for (const auto & rule : parser.rules) {
        for (const auto & element : rule) {
            if (element.type == LLAMA_GRETYPE_RULE_REF) {
                most = std::max(most, advance_breadth(parser.rules, {&element}, budget, work));
                if (most > budget) {
                    return static_cast<long>(most);
                }
            }
        }
    }
    return static_cast<long>(most);
}

llama_grammar * parse(const guarded_grammar & g) {
    return llama_grammar_init_impl(g.vocab, g.text.c_str(), g.root.c_str(), false, nullptr, 0, nullptr, 0);
}

const char * name(const llama_sampler * /*smpl*/) {
    return "grammar";
}

// llama.cpp aborts the process when an end-of-generation token comes while the grammar is not complete (no empty
// stack): that is an exception here.
void check_eog(const llama_grammar & grammar, llama_token token) {
    if (llama_vocab_is_eog(grammar.vocab, token) &&
        std::none_of(grammar.stacks.begin(), grammar.stacks.end(), [](const auto & s) { return s.empty(); })) {
        throw std::runtime_error("end of generation before the grammar is complete");
    }
}

void accept(llama_sampler * smpl, llama_token token) {
    auto * g = static_cast<guarded_grammar *>(smpl->ctx);
    check_eog(*g->grammar, token);
    llama_grammar_accept_impl(*g->grammar, token);
    // llama.cpp's next step compares every new stack with those kept so far: its cost grows with the number of
    // stacks times their total depth, which is bounded too.
    const llama_grammar_stacks & stacks = g->grammar->stacks;
    size_t depth = 0;
    for (const auto & stack : stacks) {
        depth += stack.size();
    }
    if (stacks.size() > g->max_stacks || stacks.size() * depth > g->max_stacks * 4096) {
        g->grammar->stacks.clear();
        throw too_ambiguous();
    }
}

void forbid_all(llama_token_data_array * cur_p) {
    for (size_t i = 0; i < cur_p->size; i++) {
        cur_p->data[i].logit = -INFINITY;
    }
}

// A grammar left without stacks (by a token it refused, or by too many parses) admits nothing until a reset, where
// llama.cpp's apply asserts. What llama.cpp throws (std::out_of_range for an id outside the vocabulary, say) would end
// the process in C: it forbids every candidate instead.
void apply(llama_sampler * smpl, llama_token_data_array * cur_p) {
    const llama_grammar & grammar = *static_cast<guarded_grammar *>(smpl->ctx)->grammar;
    if (grammar.stacks.empty()) {
        forbid_all(cur_p);
        return;
    }
    try {
        llama_grammar_apply_impl(grammar, cur_p);
    } catch (...) {
        forbid_all(cur_p);
    }
}

void reset(llama_sampler * smpl) {
    auto * g = static_cast<guarded_grammar *>(smpl->ctx);
    llama_grammar * fresh = parse(*g);  // parsed before: it did parse then
    if (fresh != nullptr) {
        llama_grammar_free_impl(g->grammar);
        g->grammar = fresh;
    }
}

void free_ctx(llama_sampler * smpl) {
    auto * g = static_cast<guarded_grammar *>(smpl->ctx);
    llama_grammar_free_impl(g->grammar);
    delete g;
}

llama_sampler * clone(const llama_sampler * smpl);

llama_sampler_i interface() {
    llama_sampler_i i{};  // the backend-sampling members stay null: this sampler runs on the CPU only
    i.name = name;
    i.accept = accept;
    i.apply = apply;
    i.reset = reset;
    i.clone = clone;
    i.free = free_ctx;
    return i;
}

llama_sampler_i guarded_i = interface();

llama_sampler * clone(const llama_sampler * smpl) {
    const auto * g = static_cast<const guarded_grammar *>(smpl->ctx);
    auto * copy = new guarded_grammar{g->vocab, g->text, g->root, g->max_stacks, nullptr};
    copy->grammar = llama_grammar_clone_impl(*g->grammar);
    return llama_sampler_init(&guarded_i, copy);
}

}  // namespace

// The most distinct parse stacks one advance of the grammar reaches (see breadth), budget + 1 when past it, -1 when
// it does not parse, -2 out of memory.
extern "C" long llamacffi_grammar_breadth(const struct llama_vocab * vocab, const char * text, const char * root,
                                          size_t budget) {
    try {
        return breadth(vocab, text, root, budget);
    } catch (const std::bad_alloc &) {
        return -2;
    } catch (...) {
        return -1;
    }
}

// A grammar sampler for GBNF text (start rule root) that keeps at most max_stacks parse stacks, made only when one
// advance reaches at most max_breadth stacks from any rule reference. NULL, with *why set, when it cannot be made:
// 1 the text does not parse (llama.cpp logs why), 2 more stacks than a bound, 3 out of memory.
extern "C" struct llama_sampler * llamacffi_grammar_init(const struct llama_vocab * vocab, const char * text,
                                                          const char * root, size_t max_stacks, size_t max_breadth,
                                                          int * why) {
    guarded_grammar * g = nullptr;
    try {
        long reach = breadth(vocab, text, root, max_breadth);
        if (reach < 0 || static_cast<size_t>(reach) > max_breadth) {
            *why = reach < 0 ? 1 : 2;
            return nullptr;
        }
        g = new guarded_grammar{vocab, text, root, max_stacks, nullptr};
        g->grammar = parse(*g);
        if (g->grammar == nullptr) {
            *why = 1;
        } else if (g->grammar->stacks.size() > max_stacks) {
            *why = 2;
        } else {
            return llama_sampler_init(&guarded_i, g);
        }
    } catch (const std::bad_alloc &) {
        *why = 3;
    } catch (...) {
        *why = 1;
    }
    if (g != nullptr) {
        if (g->grammar != nullptr) {
            llama_grammar_free_impl(g->grammar);
        }
        delete g;
    }
    return nullptr;
}

// llama_sampler_accept on a grammar sampler with the C++ exceptions caught: 0 when accepted; -1 when llama.cpp
// threw, -2 when the token left more parse stacks than the bound (either way the grammar admits nothing more until a
// reset). llama.cpp throws "Unexpected empty grammar stack" when a token leaves the grammar no way on, which its own
// apply step can let through: with token elements (<[id]>, !<[id]>) the apply step checks a token that starts with
// characters only by its id once it reaches the token element, while accept needs every character matched.
extern "C" int llamacffi_grammar_accept(struct llama_sampler * smpl, llama_token token) {
    try {
        llama_sampler_accept(smpl, token);
        return 0;
    } catch (const too_ambiguous &) {
        return -2;
    } catch (...) {
        return -1;
    }
}

namespace {

// Whether the grammar would accept the token, tried on its own state and put back: its stacks and partial UTF-8
// only, not a clone of the whole grammar (which copies every rule).
bool try_accept(llama_grammar & grammar, llama_token token) {
    const llama_grammar_stacks stacks = grammar.stacks;
    const llama_partial_utf8 partial = grammar.partial_utf8;
    bool ok = true;
    try {
        check_eog(grammar, token);
        llama_grammar_accept_impl(grammar, token);
    } catch (...) {
        ok = false;
    }
    grammar.stacks = stacks;
    grammar.partial_utf8 = partial;
    return ok;
}

}  // namespace

// For each of n tokens, whether accepting it now would succeed (ok[i] 1 or 0), the grammar's state unchanged: 0, or
// -1 when smpl is not a grammar sampler made by llamacffi_grammar_init, -2 out of memory.
extern "C" int llamacffi_grammar_accepts_many(struct llama_sampler * smpl, const llama_token * tokens, size_t n,
                                              unsigned char * ok) {
    if (smpl == nullptr || smpl->iface != &guarded_i) {
        return -1;
    }
    llama_grammar & grammar = *static_cast<guarded_grammar *>(smpl->ctx)->grammar;
    try {
        for (size_t i = 0; i < n; i++) {
            ok[i] = try_accept(grammar, tokens[i]) ? 1 : 0;
        }
    } catch (const std::bad_alloc &) {  // copying the stacks
        return -2;
    }
    return 0;
}

// llama_tokenize with the C++ exceptions caught: llama.cpp's result, or 0 with what it threw written to error (a
// non-empty C string, cut to error_size). A vocabulary that lacks a byte token its tokenizer looks up throws
// std::out_of_range from inside llama_tokenize.
extern "C" int32_t llamacffi_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
                                      llama_token * tokens, int32_t n_tokens_max, bool add_special,
                                      bool parse_special, char * error, size_t error_size) {
    try {
        return llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special);
    } catch (const std::exception & e) {
        std::snprintf(error, error_size, "%s", e.what()[0] ? e.what() : "an exception");
    } catch (...) {
        std::snprintf(error, error_size, "%s", "an exception of unknown type");
    }
    return 0;
}
