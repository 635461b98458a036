// The official OpenAI client (npm `openai`, pinned in package-lock.json) against a running
// instructblip-server: non-streamed and streamed chat completions with a data: URI image, n: 2, a
// bad request raising the client's APIError, /v1/models. The greedy answers must equal what
// `instructblip-generate --json` prints for the same image, prompt and settings.
//
// Environment: IB_SERVER_URL (http://127.0.0.1:PORT), IB_GENERATE (instructblip-generate),
// IB_MODEL_DIR, IB_IMAGES (image files, ':'-separated).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const baseURL = env('IB_SERVER_URL') + '/v1';
const generate = env('IB_GENERATE');
const modelDir = env('IB_MODEL_DIR');
const images = env('IB_IMAGES').split(':');
const prompt = 'Describe the image.';
const maxTokens = 12;
const queryTokens = JSON.parse(readFileSync(`${modelDir}/config.json`, 'utf8')).num_query_tokens;

const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 120000 });

function dataUri(path) {
  const mime = path.endsWith('.jpg') || path.endsWith('.jpeg') ? 'image/jpeg' : 'image/png';
  return `data:${mime};base64,${readFileSync(path).toString('base64')}`;
}

function expected(image) {
  const out = execFileSync(generate, ['--model', modelDir, '--image', image, '--prompt', prompt, '--max-new-tokens',
                                      String(maxTokens), '--json', '--quiet', '--threads', '1'],
                           { encoding: 'utf8' });
  return JSON.parse(out).texts[0];
}

function messages(image) {
  return [
    { role: 'system', content: 'ignored: InstructBLIP answers the last user message' },
    { role: 'user', content: [{ type: 'text', text: prompt }, { type: 'image_url', image_url: { url: dataUri(image) } }] },
  ];
}

let checks = 0;
const check = (name, fn) => fn().then(() => { checks++; console.log(`ok - ${name}`); });

await check('GET /v1/models lists the one model', async () => {
  const list = await client.models.list();
  assert.equal(list.data.length, 1);
  assert.equal(list.data[0].object, 'model');
});

for (const image of images) {
  const want = expected(image);
  assert.ok(want.length > 0, `instructblip-generate gave an empty answer for ${image}`);
  const name = image.split('/').pop();

  await check(`non-streamed answer equals instructblip-generate (${name}: "${want}")`, async () => {
    const r = await client.chat.completions.create({ model: 'any-name', messages: messages(image), temperature: 0,
                                                     max_tokens: maxTokens });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.model, 'any-name');
    assert.equal(r.choices.length, 1);
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].message.content, want);
    assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
    assert.ok(r.usage.prompt_tokens > queryTokens, 'prompt tokens include the query tokens and the instruction');
    assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= maxTokens);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    for (const k of ['vision_ms', 'qformer_ms', 'prefill_ms', 'decode_ms']) assert.equal(typeof r.timings[k], 'number');
  });

  await check(`streamed answer equals instructblip-generate (${name})`, async () => {
    const stream = await client.chat.completions.create({ model: 'm', messages: messages(image), temperature: 0,
                                                          max_tokens: maxTokens, stream: true,
                                                          stream_options: { include_usage: true } });
    let text = '', finish = null, chunks = 0, role = null, usage = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        assert.equal(c.index, 0);
        if (c.delta.role) role = c.delta.role;
        if (c.delta.content) { text += c.delta.content; chunks++; }
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(text, want);
    assert.ok(chunks >= 2, `the text came in ${chunks} chunk(s), not streamed`);
    assert.ok(['stop', 'length'].includes(finish));
    assert.ok(usage && usage.completion_tokens >= 1);
  });
}

await check('n: 2 with greedy settings gives two choices, each the greedy answer', async () => {
  const want = expected(images[0]);
  const r = await client.chat.completions.create({ model: 'm', messages: messages(images[0]), temperature: 0,
                                                   max_tokens: maxTokens, n: 2 });
  assert.equal(r.choices.length, 2);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  for (const c of r.choices) assert.equal(c.message.content, want);
});

await check('n: 2 with sampling and a seed gives two choices, reproducibly', async () => {
  const req = { model: 'm', messages: messages(images[0]), temperature: 1.0, top_p: 0.95, seed: 7,
                max_tokens: maxTokens, n: 2 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  assert.equal(a.choices.length, 2);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
});

await check('a request without an image raises the client\'s BadRequestError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'What is this?' }] }),
    (e) => {
      assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.status, 400);
      assert.match(e.message, /no image/);
      assert.equal(e.code, 'missing_image');
      return true;
    });
});

await check('a remote image URL raises a 400 saying the server never fetches', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: [
      { type: 'text', text: prompt }, { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }] }),
    (e) => e instanceof OpenAI.BadRequestError && /never fetches/.test(e.message));
});

console.log(`all ${checks} checks passed`);
