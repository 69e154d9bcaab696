// The config file (--config FILE, YAML or JSON): one JSON schema for all of it, made from the
// settings table (options.ts) and the port entry below; checked with ajv, read with yaml so that
// an error names its key and line ("elastic-vhost.yaml:12: ports[1].share: must be >= 1").
import * as fs from 'node:fs';
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import { isMap, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { CLI_CHECK, MOST_QUEUE_PAIRS, SETTINGS, schemaOf, settingOfFlag } from './options';

/** One vhost-user port; the schema of the config's `ports` entries and of RunningSwitch.addPort(). */
export const PORT_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'path'],
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 64, pattern: '^\\S+$', description: 'a name without spaces (logs, counters, SIGHUP and ctl know the port by it)' },
    path: { type: 'string', minLength: 1, description: 'the vhost-user socket' },
    mode: { enum: ['server', 'client'], default: 'server', description: 'server: listen on path, QEMU connects (reconnect=1); client: connect to QEMU listening there (server=on), retrying' },
    mac: { type: 'string', pattern: '^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$', description: 'a MAC address aa:bb:cc:dd:ee:ff' },
    share: { type: 'integer', minimum: 1, description: 'most blocks of the local data store frames waiting for this port may hold (default: shareLimit)' },
    queues: { type: 'integer', minimum: 1, maximum: MOST_QUEUE_PAIRS, description: 'queue pairs offered to this port (default: queues)' },
    offload: { type: 'boolean', description: 'offer checksum/TSO offloads to this port (default: offload)' },
  },
} as const;

export const CONFIG_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'elastic-vhost.schema.json',
  title: 'elastic-vhost config file',
  $comment: `${CLI_CHECK}: the value is checked by that command-line option's own parser`,
  type: 'object',
  additionalProperties: false,
  properties: {
    ports: { type: 'array', items: PORT_SCHEMA, description: 'vhost-user ports' },
    ...Object.fromEntries(SETTINGS.map((d) => [d.key, schemaOf(d)])),
  },
};

/** What a valid config file holds (socketMode still the octal string). */
export interface ConfigValues {
  ports?: { name: string; path: string; mode?: 'server' | 'client'; mac?: string; share?: number; queues?: number; offload?: boolean }[];
  [key: string]: unknown;
}

/**
 * What is wrong with options, a port spec or a config file: one line per problem in `problems`
 * ("poolMb: must be >= 1"; a config file's lines start with "file:line: "), all of them in the
 * message.
 */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
  }
}

const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true });
// the command line's parser of a spec setting, so that the file accepts what the option accepts
const cliCheck: ((flag: string, data: unknown) => boolean) & { errors?: Partial<ErrorObject>[] } = (flag, data) => {
  const d = settingOfFlag(flag);
  if (typeof data !== 'string' || d?.kind !== 'spec') return true; // the type keyword reports a number or such
  try {
    d.check(data, '');
    return true;
  } catch (e) {
    cliCheck.errors = [{ keyword: CLI_CHECK, message: (e as Error).message.trim(), params: { flag } }];
    return false;
  }
};
ajv.addKeyword({ keyword: CLI_CHECK, schemaType: 'string', errors: true, validate: cliCheck });
const validateConfig = ajv.compile(CONFIG_SCHEMA);
const validatePort = ajv.compile(PORT_SCHEMA);

/** "ports[1].share" from ["ports", 1, "share"] */
function keyName(path: (string | number)[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s === '' ? p : `.${p}`;
  return s === '' ? '(top level)' : s;
}

function pathOf(e: ErrorObject): (string | number)[] {
  if (e.instancePath === '') return [];
  return e.instancePath
    .slice(1)
    .split('/')
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

/** The key an error is about and what is wrong, in words a person editing the file follows. */
function describe(e: ErrorObject): { path: (string | number)[]; keyNode: boolean; msg: string } {
  const path = pathOf(e);
  const p = e.params as Record<string, unknown>;
  const parent = e.parentSchema as { description?: string; properties?: Record<string, unknown> } | undefined;
  switch (e.keyword) {
    case 'additionalProperties':
      return { path: [...path, p.additionalProperty as string], keyNode: true, msg: `unknown key (known: ${Object.keys(parent?.properties ?? {}).join(', ')})` };
    case 'required':
      return { path: [...path, p.missingProperty as string], keyNode: false, msg: 'is required' };
    case 'enum':
      return { path, keyNode: false, msg: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}` };
    case 'pattern':
      return { path, keyNode: false, msg: parent?.description ? `must be ${parent.description}` : (e.message ?? 'is not valid') };
    default:
      return { path, keyNode: false, msg: e.message ?? 'is not valid' };
  }
}

/** The line of path in doc: the key's own line for an unknown key, the value's otherwise; the
 * nearest enclosing node's for a missing one. */
function lineOf(doc: Document, lc: LineCounter, path: (string | number)[], keyNode: boolean): number {
  if (keyNode) {
    const parent = doc.getIn(path.slice(0, -1), true) as Node | undefined;
    if (isMap(parent)) {
      const pair = parent.items.find((it) => (it.key as { value?: unknown } | null)?.value === path[path.length - 1]);
      const r = (pair?.key as Node | undefined)?.range;
      if (r) return lc.linePos(r[0]).line;
    }
  }
  for (let n = path.length; n >= 0; n--) {
    const node = (n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true)) as Node | null | undefined;
    if (node?.range) return lc.linePos(node.range[0]).line;
  }
  return 1;
}

/** Parses and checks a config file's text; throws ConfigError with every problem, each "file:line: key: what". */
export function parseConfig(text: string, file: string): ConfigValues {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => `${file}:${lc.linePos(e.pos[0]).line}: ${e.message.split('\n')[0]}`));
  }
  const value = (doc.toJS() ?? {}) as unknown;
  const problems: { line: number; text: string }[] = [];
  if (!validateConfig(value)) {
    const seen = new Set<string>();
    for (const e of validateConfig.errors ?? []) {
      const d = describe(e);
      const line = lineOf(doc, lc, d.path, d.keyNode);
      const t = `${file}:${line}: ${keyName(d.path)}: ${d.msg}`;
      if (!seen.has(t)) problems.push({ line, text: t });
      seen.add(t);
    }
  } else {
    // what one schema cannot say: names and socket paths of ports are unique
    const ports = (value as ConfigValues).ports ?? [];
    for (const k of ['name', 'path'] as const) {
      const first = new Map<string, number>();
      ports.forEach((p, i) => {
        const j = first.get(p[k]);
        if (j === undefined) first.set(p[k], i);
        else problems.push({ line: lineOf(doc, lc, ['ports', i, k], false), text: `${file}:${lineOf(doc, lc, ['ports', i, k], false)}: ports[${i}].${k}: "${p[k]}" is also ports[${j}].${k}` });
      });
    }
  }
  if (problems.length > 0) throw new ConfigError(problems.sort((a, b) => a.line - b.line).map((p) => p.text));
  return value as ConfigValues;
}

export function loadConfig(file: string): ConfigValues {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError([`${file}: ${(e as Error).message}`]);
  }
  return parseConfig(text, file);
}

/** A port spec checked against the schema's port entry (RunningSwitch.addPort): null or "key: what". */
export function portSchemaProblem(spec: unknown): string | null {
  if ((validatePort as ValidateFunction)(spec)) return null;
  const e = (validatePort.errors ?? [])[0];
  const d = describe(e);
  return `${keyName(d.path)}: ${d.msg}`;
}

/**
 * A checker of values against `schema`, compiled once with the config file's validator (its
 * keywords, CLI_CHECK included), whose problems read as the config file's do: "key: what" each.
 * The library (src/api/) checks what createSwitch() and the port factories are given with it, so a
 * program and a config file are told the same thing about the same mistake.
 */
export function schemaChecker(schema: object): (value: unknown) => string[] {
  const validate = ajv.compile(schema);
  return (value) => {
    if (validate(value)) return [];
    const out = new Set<string>();
    for (const e of validate.errors ?? []) {
      const d = describe(e);
      out.add(`${keyName(d.path)}: ${d.msg}`);
    }
    return [...out];
  };
}
