#!/usr/bin/env node
// The BullMQ peer of nurture's reference journey (benches/reference.rs): the same four steps,
// one BullMQ job each, on the Redis at REDIS_URL under a key prefix of its own.
//
//   branch          read the contact's score from its Redis hash; score >= 50 takes the `hot`
//                   path, anything else the `warm` path (two email templates)
//   send_email      render the path's template with the contact's name (plain string
//                   replacement of {{name}} and {{unsubscribe_url}}, HTML-escaped) and append a
//                   message to an mbox in the outbox directory, like nurture's outbox
//   wait            a delayed job (--delay-ms; 0 for the throughput run)
//   assign_to_sales round robin over three reps, each with an open-lead counter in Redis and a
//                   capacity; the rep is written to the contact's hash
//
// Every mode prints one JSON line of results on stdout (progress goes to stderr):
//   steps   --contacts N --concurrency C [--delay-ms D]   steps/s over N contacts x 4 jobs
//   latency --rate R --seconds S [--concurrency C]        event -> email written, p50/p99
//   http    --port P                                      POST /v1/track, /v1/batch -> queue.add
//   waiting --count N --delay-ms D                        Redis used_memory per delayed job
// Common options: --prefix P (default nbench-bullmq-<pid>), --outbox DIR, --keep (leave the
// keys and the outbox behind). Workers run in this process, like nurture's bench worker.

'use strict';

const fs = require('node:fs');
const fsp = require('node:fs/promises');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const { Queue, Worker } = require('bullmq');
const bullmqVersion = require('bullmq/package.json').version;
const IORedis = require('ioredis');

const QUEUE = 'reference';
const REPS = ['rep-a', 'rep-b', 'rep-c'];
const HOT_SCORE = 50;
const TEMPLATES = {
  hot: {
    subject: 'Your automation plan, {{name}}',
    html: '<p>Hi {{name}},</p>\n<p>Your score puts you on the fast track: a rep will call you this week.</p>\n<p><a href="{{unsubscribe_url}}">Unsubscribe</a></p>\n',
  },
  warm: {
    subject: 'Ideas for your line, {{name}}',
    html: '<p>Hi {{name}},</p>\n<p>Three ideas from the guide you can try on your line this quarter.</p>\n<p><a href="{{unsubscribe_url}}">Unsubscribe</a></p>\n',
  },
};

// ---- command line ------------------------------------------------------------------------

function parseArgs(argv) {
  const [mode, ...rest] = argv;
  const options = {};
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
    const name = arg.slice(2);
    if (name === 'keep') {
      options.keep = true;
    } else {
      if (i + 1 >= rest.length) throw new Error(`${arg} needs a value`);
      options[name] = rest[++i];
    }
  }
  return { mode, options };
}

function number(options, name, fallback) {
  const value = options[name] === undefined ? fallback : Number(options[name]);
  if (!Number.isFinite(value) || value < 0) throw new Error(`--${name} must be a number >= 0`);
  return value;
}

function log(...args) {
  console.error('[bullmq-peer]', ...args);
}

/** Milliseconds since the Unix epoch, with the sub-millisecond part. */
function nowMs() {
  return performance.timeOrigin + performance.now();
}

function percentile(sorted, fraction) {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil(fraction * sorted.length);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}

const round = (x) => Math.round(x * 100) / 100;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the journey -------------------------------------------------------------------------

class Journey {
  constructor({ redisUrl, prefix, outbox, capacity }) {
    this.prefix = prefix;
    this.outbox = outbox;
    this.capacity = capacity;
    // One connection for the steps' own reads and writes; BullMQ opens its own.
    this.redis = new IORedis(redisUrl, { maxRetriesPerRequest: null });
    this.connection = { url: redisUrl, maxRetriesPerRequest: null };
    this.queue = new Queue(QUEUE, {
      connection: this.connection,
      prefix,
      defaultJobOptions: { removeOnComplete: true, removeOnFail: 1000 },
    });
    this.steps = 0;
    this.emails = 0;
    this.emailLatencies = [];
    this.onStep = () => {};
  }

  contactKey(id) {
    return `${this.prefix}:contact:${id}`;
  }

  /** Contacts 0..count-1 with a name, an email and a score, as nurture's bench creates them. */
  async createContacts(count) {
    for (let start = 0; start < count; start += 1000) {
      const pipeline = this.redis.pipeline();
      for (let i = start; i < Math.min(count, start + 1000); i++) {
        pipeline.hset(this.contactKey(i), {
          name: `Ada ${i}`,
          email: `bench${i}@example.com`,
          score: String(contactScore(i)),
        });
      }
      await pipeline.exec();
    }
  }

  startWorker(concurrency) {
    this.worker = new Worker(QUEUE, (job) => this.run(job), {
      connection: this.connection,
      prefix: this.prefix,
      concurrency,
    });
    this.worker.on('failed', (job, error) => log(`job ${job && job.name} failed: ${error.message}`));
  }

  async run(job) {
    const data = job.data;
    switch (job.name) {
      case 'branch': {
        const score = Number(await this.redis.hget(this.contactKey(data.contact), 'score'));
        const pathName = score >= HOT_SCORE ? 'hot' : 'warm';
        await this.queue.add('send_email', { ...data, path: pathName });
        break;
      }
      case 'send_email': {
        const contact = await this.redis.hgetall(this.contactKey(data.contact));
        await this.writeEmail(job.id, data, contact);
        const latency = nowMs() - data.sentAt;
        this.emails += 1;
        this.emailLatencies.push(latency);
        await this.queue.add('wait', data, { delay: data.delayMs });
        break;
      }
      case 'wait':
        await this.queue.add('assign_to_sales', data);
        break;
      case 'assign_to_sales':
        await this.assign(data.contact);
        break;
      default:
        throw new Error(`unknown step ${job.name}`);
    }
    this.steps += 1;
    this.onStep();
  }

  async writeEmail(jobId, data, contact) {
    const template = TEMPLATES[data.path];
    const values = {
      name: escapeHtml(contact.name || 'there'),
      unsubscribe_url: `http://localhost:8080/u/${encodeURIComponent(data.contact)}`,
    };
    const render = (text) => text.replace(/\{\{(\w+)\}\}/g, (_, key) => values[key] ?? '');
    const html = render(template.html);
    const text = html.replace(/<[^>]+>/g, '');
    const boundary = `b-${jobId}`;
    const eml = [
      'From: Nurture Bench <bench@example.com>',
      `To: ${contact.email}`,
      `Subject: ${render(template.subject)}`,
      `Message-ID: <${this.prefix}.${jobId}@bullmq-peer>`,
      `Date: ${new Date().toUTCString()}`,
      'MIME-Version: 1.0',
      `Content-Type: multipart/alternative; boundary="${boundary}"`,
      '',
      `--${boundary}`,
      'Content-Type: text/plain; charset=utf-8',
      '',
      text,
      `--${boundary}`,
      'Content-Type: text/html; charset=utf-8',
      '',
      html,
      `--${boundary}--`,
      '',
    ].join('\r\n');
    await this.appendToMbox(eml);
  }

  /** Appends the message to today's mbox (mboxrd), one write per message, like nurture's
   * outbox: a file per message costs the kernel far more than the rest of the step. */
  async appendToMbox(eml) {
    if (!this.mbox) {
      const day = new Date().toISOString().slice(0, 10);
      this.mbox = fsp.open(path.join(this.outbox, `${day}.mbox`), 'a');
    }
    const lines = eml.split('\r\n').map((line) => (/^>*From /.test(line) ? `>${line}` : line));
    const entry = `From peer ${new Date().toUTCString()}\n${lines.join('\n')}\n\n`;
    await (await this.mbox).write(entry);
  }

  /** Round robin from a shared turn counter, skipping reps at capacity. */
  async assign(contactId) {
    const turn = await this.redis.incr(`${this.prefix}:rr`);
    for (let offset = 0; offset < REPS.length; offset++) {
      const rep = REPS[(turn + offset) % REPS.length];
      const openKey = `${this.prefix}:open:${rep}`;
      const open = await this.redis.incr(openKey);
      if (open <= this.capacity) {
        await this.redis.hset(this.contactKey(contactId), 'owner', rep);
        return rep;
      }
      await this.redis.decr(openKey);
    }
    throw new Error('every rep is at capacity');
  }

  async close({ keep }) {
    if (this.worker) await this.worker.close();
    if (this.mbox) await (await this.mbox).close();
    if (!keep) {
      await deleteKeys(this.redis, this.prefix);
      await fsp.rm(this.outbox, { recursive: true, force: true });
    }
    await this.queue.close();
    this.redis.disconnect();
  }
}

/** The same scores nurture's bench gives its contacts: about half take each path. */
function contactScore(i) {
  return (i * 37) % 100;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function deleteKeys(redis, prefix) {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    if (keys.length > 0) await redis.unlink(...keys);
    cursor = next;
  } while (cursor !== '0');
}

async function usedMemory(redis) {
  const info = await redis.info('memory');
  const match = /used_memory:(\d+)/.exec(info);
  return match ? Number(match[1]) : 0;
}

/** MEMORY USAGE summed over the prefix's keys: not disturbed by other users of the server. */
async function keyBytes(redis, prefix) {
  let total = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    for (const key of keys) total += (await redis.memory('USAGE', key, 'SAMPLES', 0)) || 0;
    cursor = next;
  } while (cursor !== '0');
  return total;
}

/** Resolves when `done()` is true, checked after every step, or rejects after `timeoutMs`. */
function until(journey, done, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (done()) return resolve();
    const timer = setTimeout(() => reject(new Error(`not done within ${timeoutMs} ms`)), timeoutMs);
    journey.onStep = () => {
      if (done()) {
        clearTimeout(timer);
        journey.onStep = () => {};
        resolve();
      }
    };
  });
}

// ---- modes -------------------------------------------------------------------------------

async function steps(journey, options) {
  const contacts = number(options, 'contacts', 20000);
  const concurrency = number(options, 'concurrency', 48);
  const delayMs = number(options, 'delay-ms', 0);
  await journey.createContacts(contacts);
  journey.startWorker(concurrency);
  const target = contacts * 4;
  const finished = until(journey, () => journey.steps >= target, number(options, 'timeout-s', 600) * 1000);
  const started = nowMs();
  for (let start = 0; start < contacts; start += 1000) {
    const sentAt = nowMs();
    const jobs = [];
    for (let i = start; i < Math.min(contacts, start + 1000); i++) {
      jobs.push({ name: 'branch', data: { contact: i, sentAt, delayMs } });
    }
    await journey.queue.addBulk(jobs);
  }
  const enqueued = nowMs() - started;
  await finished;
  const wall = nowMs() - started;
  const latencies = journey.emailLatencies.sort((a, b) => a - b);
  return {
    mode: 'steps',
    contacts,
    concurrency,
    delay_ms: delayMs,
    steps: journey.steps,
    emails: journey.emails,
    wall_ms: round(wall),
    enqueue_ms: round(enqueued),
    steps_per_s: round(journey.steps / (wall / 1000)),
    first_email_p50_ms: round(percentile(latencies, 0.5)),
  };
}

async function latency(journey, options) {
  const rate = number(options, 'rate', 500);
  const seconds = number(options, 'seconds', 10);
  const concurrency = number(options, 'concurrency', 48);
  const delayMs = number(options, 'delay-ms', 0);
  const events = Math.max(1, Math.round(rate * seconds));
  await journey.createContacts(events);
  journey.startWorker(concurrency);
  const finished = until(journey, () => journey.steps >= events * 4, number(options, 'timeout-s', 600) * 1000);
  // Open loop: event i is due at start + i / rate; its latency counts from then, so a late
  // producer does not hide queueing.
  const start = nowMs() + 50;
  const adds = [];
  let sent = 0;
  while (sent < events) {
    const now = nowMs();
    const due = Math.min(events, Math.floor(((now - start) * rate) / 1000) + 1);
    for (; sent < due; sent++) {
      const sentAt = start + (sent * 1000) / rate;
      adds.push(journey.queue.add('branch', { contact: sent, sentAt, delayMs }));
    }
    await sleep(1);
  }
  await Promise.all(adds);
  const produced = nowMs() - start;
  await finished;
  const latencies = journey.emailLatencies.sort((a, b) => a - b);
  return {
    mode: 'latency',
    rate,
    seconds,
    events,
    achieved_rate: round(events / (produced / 1000)),
    emails: journey.emails,
    steps: journey.steps,
    p50_ms: round(percentile(latencies, 0.5)),
    p99_ms: round(percentile(latencies, 0.99)),
    max_ms: round(latencies[latencies.length - 1] || 0),
  };
}

/** Segment-style ingestion: each track message becomes the journey's first job. */
async function serveHttp(journey, options) {
  const port = number(options, 'port', 0);
  let requests = 0;
  let messages = 0;
  const toJob = (message) => ({
    name: 'branch',
    data: { contact: message.userId || message.anonymousId, properties: message.properties || {}, sentAt: nowMs(), delayMs: 0 },
  });
  const reply = (response, status, body) => {
    const text = JSON.stringify(body);
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    response.end(text);
  };
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', async () => {
      try {
        if (request.method !== 'POST') return reply(response, 405, { error: 'POST only' });
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (request.url === '/v1/track') {
          const job = toJob(body);
          await journey.queue.add(job.name, job.data);
          messages += 1;
        } else if (request.url === '/v1/batch') {
          const jobs = (body.batch || []).filter((m) => (m.type || 'track') === 'track').map(toJob);
          await journey.queue.addBulk(jobs);
          messages += jobs.length;
        } else {
          return reply(response, 404, { error: 'not found' });
        }
        requests += 1;
        reply(response, 200, { success: true });
      } catch (error) {
        reply(response, 400, { error: String(error.message || error) });
      }
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  // The first line tells the driver where to send its load.
  console.log(JSON.stringify({ mode: 'http', ready: true, port: server.address().port }));
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  return { mode: 'http', requests, messages };
}

async function waiting(journey, options) {
  const count = number(options, 'count', 10000);
  const delayMs = number(options, 'delay-ms', 3_600_000);
  // The queue's own keys (meta, id counter) exist before the baseline.
  await journey.queue.add('wait', { contact: -1, path: 'warm', delayMs }, { delay: delayMs });
  await journey.queue.drain(true);
  const before = await usedMemory(journey.redis);
  const keysBefore = await keyBytes(journey.redis, journey.prefix);
  for (let start = 0; start < count; start += 1000) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + 1000); i++) {
      jobs.push({ name: 'wait', data: { contact: i, path: i % 2 ? 'hot' : 'warm', sentAt: nowMs(), delayMs }, opts: { delay: delayMs } });
    }
    await journey.queue.addBulk(jobs);
  }
  const after = await usedMemory(journey.redis);
  const keysAfter = await keyBytes(journey.redis, journey.prefix);
  const delayed = await journey.queue.getDelayedCount();
  return {
    mode: 'waiting',
    count,
    delay_ms: delayMs,
    delayed,
    used_memory_before: before,
    used_memory_after: after,
    bytes_per_job: round((after - before) / count),
    key_bytes_per_job: round((keysAfter - keysBefore) / count),
  };
}

async function main() {
  const { mode, options } = parseArgs(process.argv.slice(2));
  const modes = { steps, latency, http: serveHttp, waiting };
  if (!modes[mode]) {
    console.error('usage: peer.js steps|latency|http|waiting [options] (see the top of peer.js)');
    process.exit(2);
  }
  const prefix = options.prefix || `nbench-bullmq-${process.pid}`;
  const outbox = options.outbox || path.join(os.tmpdir(), `${prefix}-outbox`);
  fs.mkdirSync(outbox, { recursive: true });
  const journey = new Journey({
    redisUrl: process.env.REDIS_URL || 'redis://127.0.0.1:6379',
    prefix,
    outbox,
    capacity: number(options, 'capacity', 1_000_000),
  });
  let result;
  try {
    result = await modes[mode](journey, options);
  } finally {
    await journey.close({ keep: Boolean(options.keep) });
  }
  console.log(JSON.stringify({ peer: `bullmq ${bullmqVersion}`, node: process.version, ...result }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
