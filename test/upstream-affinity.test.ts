// upstream.affinity's broker order (src/upstream/affinity.ts): rendezvous hashing of a CONNECT
// field over the brokers. Stable, spread evenly, and taking a broker out moves only the keys it
// was first for.
import t from 'tap'
import type { HostPort } from '../src/config/formats.js'
import { brokerOrder, rendezvousOrder, weight } from '../src/upstream/affinity.js'

const brokers: HostPort[] = [
  { host: '10.0.0.1', port: 1883 },
  { host: '10.0.0.2', port: 1883 },
  { host: '10.0.0.3', port: 1883 },
]
const name = (b: HostPort | undefined): string => (b ? `${b.host}:${b.port}` : 'none')
const keys = Array.from({ length: 3_000 }, (_, i) => `device-${i}`)

t.test(
  'the order is a permutation of the brokers, heaviest first, the same every time',
  async (t) => {
    const wrong: string[] = []
    for (const key of keys) {
      const order = rendezvousOrder(brokers, key)
      if ([...order].map(name).sort().join() !== brokers.map(name).sort().join())
        wrong.push(`${key}: not every broker once`)
      if (rendezvousOrder(brokers, key).map(name).join() !== order.map(name).join())
        wrong.push(`${key}: not stable`)
      const weights = order.map((b) => weight(b, key))
      if (!weights.every((w, i) => i === 0 || (weights[i - 1] as bigint) > w))
        wrong.push(`${key}: not by falling weight`)
    }
    t.same(wrong, [], `${keys.length} keys`)
  },
)

// Computed apart from the code under test: the weight with
//   printf '10.0.0.1:1883\ndevice-0' | sha1sum | cut -c1-16
// and the first choices with Python's hashlib, taking the largest weight of the three.
const PINNED = '4a7f7a3ce0d2499c'
const PINNED_FIRST = ['10.0.0.3:1883', '10.0.0.2:1883', '10.0.0.1:1883', '10.0.0.2:1883']

t.test('pinned: the hash is part of the interface (changing it moves every client)', async (t) => {
  t.equal(
    weight(brokers[0] as HostPort, 'device-0')
      .toString(16)
      .padStart(16, '0'),
    PINNED,
  )
  t.same(
    ['device-0', 'device-1', 'device-2', 'alice'].map((key) =>
      name(rendezvousOrder(brokers, key)[0]),
    ),
    PINNED_FIRST,
  )
})

t.test('keys spread evenly over the brokers', async (t) => {
  const counts = new Map<string, number>()
  for (const key of keys) {
    const first = name(rendezvousOrder(brokers, key)[0])
    counts.set(first, (counts.get(first) ?? 0) + 1)
  }
  for (const broker of brokers) {
    const share = (counts.get(name(broker)) ?? 0) / keys.length
    t.ok(share > 0.28 && share < 0.39, `${name(broker)} first for ${(share * 100).toFixed(1)}%`)
  }
})

t.test('a broker taken out moves only its own keys, each to its second choice', async (t) => {
  const [, gone] = brokers
  const left = brokers.filter((b) => b !== gone)
  let moved = 0
  const wrong: string[] = []
  for (const key of keys) {
    const before = rendezvousOrder(brokers, key)
    const after = rendezvousOrder(left, key)
    if (name(before[0]) === name(gone)) {
      moved++
      if (name(after[0]) !== name(before[1])) wrong.push(`${key} did not go to its second choice`)
    } else if (name(after[0]) !== name(before[0])) {
      wrong.push(`${key} moved from ${name(before[0])}, which is still there`)
    }
  }
  t.same(wrong, [], 'the others keep their broker; the moved go to their second choice')
  t.ok(moved > 800 && moved < 1_200, `about a third moved (${moved})`)
})

t.test('a broker added takes about its share, from every other broker alike', async (t) => {
  const more = [...brokers, { host: '10.0.0.4', port: 1883 }]
  let moved = 0
  const wrong: string[] = []
  for (const key of keys) {
    const before = name(rendezvousOrder(brokers, key)[0])
    const after = name(rendezvousOrder(more, key)[0])
    if (after === before) continue
    moved++
    if (after !== '10.0.0.4:1883') wrong.push(`${key} moved from ${before} to ${after}`)
  }
  t.same(wrong, [], 'keys move only to the new broker')
  t.ok(moved > 600 && moved < 900, `about a quarter moved (${moved})`)
})

t.test('brokerOrder: which field, and the fall-backs to the configured order', async (t) => {
  const fields = { clientId: 'device-1', username: 'alice' }
  t.equal(brokerOrder(brokers, 'none', fields), brokers, 'none: the configured list itself')
  t.same(brokerOrder(brokers, 'clientId', fields), rendezvousOrder(brokers, 'device-1'))
  t.same(brokerOrder(brokers, 'username', fields), rendezvousOrder(brokers, 'alice'))
  t.equal(
    brokerOrder(brokers, 'clientId', { clientId: '', username: 'alice' }),
    brokers,
    'an empty client id (the broker assigns one): configured order',
  )
  t.equal(
    brokerOrder(brokers, 'username', { clientId: 'device-1', username: undefined }),
    brokers,
    'no username: configured order',
  )
  t.equal(brokerOrder(brokers, 'username', { clientId: 'x', username: '' }), brokers, 'empty')
  const one = brokers.slice(0, 1)
  t.equal(brokerOrder(one, 'clientId', fields), one, 'one broker: nothing to order')
  // Not the configured order for every key: otherwise the tests above would prove nothing.
  t.ok(
    keys
      .slice(0, 20)
      .some(
        (key) =>
          name(brokerOrder(brokers, 'clientId', { clientId: key, username: undefined })[0]) !==
          name(brokers[0]),
      ),
    'some keys start elsewhere than the first broker',
  )
})

t.test('an IPv6 broker is hashed as upstream.brokers writes it: [::1]:1883', async (t) => {
  // printf '[::1]:1883\nk' | sha1sum | cut -c1-16
  const v6 = weight({ host: '::1', port: 1883 }, 'k')
  t.equal(v6.toString(16).padStart(16, '0'), 'c476b006d677af8e')
})
