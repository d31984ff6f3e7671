"""Chat templates other than the tiny model's own, for the tests that check every stage renders a
version's prompts with the template it was trained with."""

# A different layout of the same special tokens: the prompts differ from the base template's.
CUSTOM = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>### ' + message['role'] | upper + ':\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>### ASSISTANT:\n' }}{% endif %}"
)

# No system role (as Gemma and early Mistral templates): the system text is folded into the first
# user turn.
NO_SYSTEM = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|im_start|>user\n' + ns.system + message['content'] + '<|im_end|>\n' }}{% set ns.system = '' %}"
    "{% else %}{{ '<|im_start|>assistant\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You triage support tickets."},
    {"role": "user", "content": "My package for order #12345 never arrived"},
    {"role": "assistant", "content": "Category: shipping"},
]


def save_with_template(tokenizer_source: str, folder, template: str) -> None:
    """Save `tokenizer_source`'s tokenizer into `folder` carrying `template`, as an export does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)


# A template that refuses a role, as many real ones refuse a system turn.
REFUSES_SYSTEM = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
