// Topic permissions (auth.permissionsClaim), the pure part: the claim's parsing, and topic
// matching and filter containment checked against a reference matcher (qlobber, what Aedes
// matches with; test/helpers/topic-reference.ts) on seeded random cases.
import t from 'tap'
import {
  TopicPermissions,
  parsePermissions,
  permissionsOf,
  problemOfFilter,
  type PermissionsFault,
} from '../src/auth/permissions.js'
import { prng, seedFrom, type Prng } from './helpers/prng.js'
import { ReferenceMatcher, referenceMatches } from './helpers/topic-reference.js'

function parsed(value: unknown, subject?: string): TopicPermissions {
  const result = parsePermissions(value, subject)
  if ('fault' in result) throw new Error(result.fault)
  return result
}

function fault(value: unknown, subject?: string): string {
  const result = parsePermissions(value, subject)
  return 'fault' in result ? result.fault : 'no fault'
}

t.test('the claim: publish and subscribe lists of filters, {sub} the subject', async (t) => {
  const p = parsed(
    { publish: ['devices/{sub}/telemetry', 'chat/+'], subscribe: ['devices/{sub}/#'] },
    'alice',
  )
  t.ok(p.mayPublish('devices/alice/telemetry'))
  t.notOk(p.mayPublish('devices/bob/telemetry'), "another subject's topic")
  t.ok(p.mayPublish('chat/room1'))
  t.notOk(p.mayPublish('chat/room1/x'), '+ is one level')
  t.ok(p.maySubscribe('devices/alice/#'))
  t.ok(p.maySubscribe('devices/alice/+/x'))
  t.ok(p.maySubscribe('$share/g1/devices/alice/cmd'), 'a shared subscription, by its filter')
  t.notOk(p.maySubscribe('$share/g1/devices/bob/cmd'))
  t.notOk(p.maySubscribe('$share//devices/alice/cmd'), 'an empty share name')
  t.notOk(p.maySubscribe('$share/g+/devices/alice/cmd'), 'a wildcard in the share name')
  t.notOk(p.maySubscribe('$share/g1'), 'no filter after the group')
  t.notOk(p.maySubscribe('devices/+/#'), 'wider than the grant')
  t.notOk(p.maySubscribe('#'))
  t.notOk(p.mayPublish('devices/alice/#'), 'a wildcard is no topic name')
  t.notOk(p.maySubscribe('devices/alice/#/x'), 'an invalid filter')
  t.notOk(p.mayPublish(''), 'an empty topic (a topic alias)')
  t.notOk(p.mayPublish('chat/a\0'))

  const none = parsed({})
  t.notOk(none.mayPublish('a'), 'no publish key: nothing')
  t.notOk(none.maySubscribe('a'), 'no subscribe key: nothing')
  const missing = permissionsOf({ sub: 'x' }, 'mqtt', 'x') as TopicPermissions
  t.notOk(missing.mayPublish('a'), 'a token without the claim is granted nothing')
  t.notOk(missing.maySubscribe('a'))
  const present = permissionsOf({ mqtt: { publish: ['a'] } }, 'mqtt', undefined)
  t.ok((present as TopicPermissions).mayPublish('a'))
})

t.test('the filter rule: allowed only when every topic it matches is', async (t) => {
  const cases: [string[], string, boolean][] = [
    [['#'], '#', true],
    [['#'], 'a/#', true],
    [['+/#'], '#', true],
    [['#'], '$SYS/x', false],
    [['+/x'], '$SYS/x', false],
    [['$SYS/#'], '$SYS/broker/load', true],
    [['a/+'], 'a/#', false],
    [['a', 'a/+/#'], 'a/#', true],
    [['a/+', 'a/+/+/#'], 'a/+/#', true],
    [['a/+', 'a/+/+/+/#'], 'a/+/#', false],
    [['a/+/#'], 'a/+/#', true],
    [['a/b/#'], 'a/b', true],
    [['a/b'], 'a/b/#', false],
    [['a/b', 'a/c'], 'a/+', false],
    [['+', '+/+/#'], '#', true],
    [['+', '+/+/+/#'], '#', false],
    [['+', '+/+', '+/+/+/#'], '#', true],
    [['a//b'], 'a/+/b', false],
    [['a/+/b'], 'a//b', true],
  ]
  for (const [grants, filter, allowed] of cases) {
    const p = new TopicPermissions([], grants)
    t.equal(p.maySubscribe(filter), allowed, `${JSON.stringify(grants)} ${filter}`)
  }
})

t.test('claims that are refused, with what is wrong', async (t) => {
  t.match(fault('x'), /not an object/)
  t.match(fault(['a']), /not an object/)
  t.match(fault(null), /not an object/)
  t.match(fault({ publish: 'a' }), /"publish" is not an array/)
  t.match(fault({ subscribe: [1] }), /"subscribe"\[0\] is not a string/)
  t.match(fault({ publish: ['a'], subscribe: ['a/#/b'] }), /"subscribe"\[0\] has "#"/)
  t.match(fault({ publish: ['a+'] }), /"\+" inside a level/)
  t.match(fault({ publish: [''] }), /is empty/)
  t.match(fault({ publish: ['a\0'] }), /U\+0000/)
  t.match(fault({ publish: ['x'.repeat(65_536)] }), /65535/)
  t.match(fault({ subscribe: ['$share/g/a'] }), /shared subscription/)
  t.match(fault({ subscribe: ['a'], publsh: ['b'] }), /unknown key "publsh"/)
  // A subject must not widen what {sub} grants.
  t.match(fault({ publish: ['u/{sub}/#'] }), /no subject/)
  t.match(fault({ publish: ['u/{sub}/#'] }, ''), /empty/)
  for (const subject of ['a/b', 'a+', '#', 'a\0']) {
    t.match(fault({ publish: ['u/{sub}/#'] }, subject), /holds/, JSON.stringify(subject))
  }
  t.match(fault({ publish: ['{sub}/#'] }, '$SYS'), /starts with "\$"/)
  t.equal(fault({ publish: ['a'] }, 'a/b'), 'no fault', 'the subject matters only with {sub}')
  const p = parsed({ publish: ['u/{sub}/{sub}'] }, 'al.ice-1')
  t.ok(p.mayPublish('u/al.ice-1/al.ice-1'), 'every {sub} is replaced')
  const r = permissionsOf({ mqtt: 7 }, 'mqtt', 's') as PermissionsFault
  t.match(r.fault, /not an object/)
})

// Levels the generators build filters and topics from: an empty level, a `$` level (special
// at the start), and literals. Topics also draw `z` and `$z`, named by no filter: they stand for
// every value a filter's literals do not name.
const FILTER_LEVELS = ['a', 'b', '', '$a']
const TOPIC_LEVELS = [...FILTER_LEVELS, 'z', '$z']

function randomFilter(r: Prng, maxLevels: number): string {
  const n = r.between(1, maxLevels)
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    const last = i === n - 1
    const roll = r.int(10)
    if (last && roll < 2) out.push('#')
    else if (roll < 5) out.push('+')
    else out.push(r.pick(FILTER_LEVELS))
  }
  // A filter of one empty level is the empty string, which is not a filter [MQTT-4.7.3-1].
  return out.join('/') || 'a'
}

function randomTopic(r: Prng, maxLevels: number): string {
  const n = r.between(1, maxLevels)
  return Array.from({ length: n }, () => r.pick(TOPIC_LEVELS)).join('/') || 'z'
}

// Every topic of 1 to `depth` levels over TOPIC_LEVELS.
function universe(depth: number): string[] {
  let layer = TOPIC_LEVELS.slice()
  // One empty level is the empty string, which is not a topic name [MQTT-4.7.3-1].
  const all = layer.filter((topic) => topic !== '')
  for (let d = 2; d <= depth; d++) {
    layer = layer.flatMap((prefix) => TOPIC_LEVELS.map((level) => `${prefix}/${level}`))
    all.push(...layer)
  }
  return all
}

t.test('matching agrees with the reference on random filters and topics', async (t) => {
  const seed = seedFrom(t, 'PERMISSIONS_SEED', 1501)
  const r = prng(seed)
  let disagreements = 0
  let matched = 0
  const runs = 20_000
  for (let n = 0; n < runs; n++) {
    const filter = randomFilter(r, 5)
    const topic = randomTopic(r, 5)
    t.equal(problemOfFilter(filter), undefined, 'the generator builds valid filters')
    const ours = new TopicPermissions([filter], []).mayPublish(topic)
    const reference = referenceMatches(filter, topic)
    if (ours) matched++
    if (ours !== reference) {
      disagreements++
      t.fail(`${filter} vs ${topic}: ours ${ours}, reference ${reference}`)
      if (disagreements > 5) break
    }
  }
  t.equal(disagreements, 0)
  t.comment(`${runs} pairs, ${matched} matched`)
  t.ok(matched > runs / 20 && matched < runs - runs / 20, 'both answers are drawn often')
})

// A requested filter against a few grants, by brute force over every topic of up to 4 levels.
// Filters here have at most 3 levels, so every topic deeper than 3 behaves as one of depth 4
// with the same first 3 levels does (a filter can match it only through a `#` within its first
// 3 levels), and `z`, `$z` stand for all other values: over this universe "every topic the
// filter matches is granted" is exact, so maySubscribe must agree both ways.
t.test('containment agrees with brute force over a topic universe', async (t) => {
  const seed = seedFrom(t, 'PERMISSIONS_SEED', 1502)
  const r = prng(seed)
  const topics = universe(4)
  t.equal(topics.length, 5 + 36 + 216 + 1296)
  let allowed = 0
  let wrong = 0
  const runs = 1_500
  for (let n = 0; n < runs && wrong <= 5; n++) {
    const grants = Array.from({ length: r.between(1, 4) }, () => randomFilter(r, 3))
    const filter = randomFilter(r, 3)
    const request = new ReferenceMatcher([filter])
    const granted = new ReferenceMatcher(grants)
    const escaping = topics.find((topic) => request.matchesAny(topic) && !granted.matchesAny(topic))
    const expected = escaping === undefined
    const ours = new TopicPermissions([], grants).maySubscribe(filter)
    if (ours) allowed++
    if (ours !== expected) {
      wrong++
      t.fail(
        `${JSON.stringify(grants)} / ${filter}: ours ${ours}` +
          (escaping === undefined ? ', but every topic is granted' : `, but ${escaping} escapes`),
      )
    }
    // A shared subscription is judged by its filter alone.
    t.equal(new TopicPermissions([], grants).maySubscribe(`$share/g/${filter}`), ours)
  }
  t.equal(wrong, 0, 'sound (never allowed with a topic escaping) and complete')
  t.comment(`${runs} cases, ${allowed} allowed`)
  t.ok(allowed > runs / 20 && allowed < runs - runs / 20, 'both answers are drawn often')
})
