"""An independent MDS writer and reader, written from the format's description (MosaicML Streaming's docs and
streaming/base/format/mds: index.json version 2; a shard is [num_samples u32][offsets (n+1) x u32][config JSON]
[samples]; a sample is its variable-size columns' u32 sizes then every column's bytes; columns sorted by name).
No mosaicml-streaming package here: this is the interoperability oracle of tests/Data/MdsTests.cs.

  python3 mds_reference.py write DIR   # writes a 4-column dataset, prints its samples as JSON lines
  python3 mds_reference.py read DIR    # prints every sample of DIR as JSON lines (hashes checked)
Columns understood: bytes (printed as hex), str, int, int32/uint16/int64 scalars, ndarray:<dtype> (dynamic shape).
"""
import hashlib
import json
import os
import struct
import sys

DTYPES = {'uint8': ('B', 1, 8), 'int8': ('b', 1, 9), 'uint16': ('H', 2, 16), 'int16': ('h', 2, 17),
          'uint32': ('I', 4, 32), 'int32': ('i', 4, 33), 'uint64': ('Q', 8, 64), 'int64': ('q', 8, 65)}
CODE_TO_DTYPE = {v[2]: k for k, v in DTYPES.items()}


def encode(encoding, value):
    if encoding == 'bytes':
        return bytes.fromhex(value)
    if encoding == 'str':
        return value.encode('utf-8')
    if encoding == 'int':
        return struct.pack('<q', value)
    if encoding in DTYPES:
        return struct.pack('<' + DTYPES[encoding][0], value)
    if encoding.startswith('ndarray:'):
        dtype = encoding.split(':')[1]
        fmt, _, _ = DTYPES[dtype]
        n = len(value)
        width = 0 if n < 256 else 1 if n < 65536 else 2
        shape = struct.pack('<' + 'BHI'[width], n)
        return bytes([(1 << 2) | width]) + shape + struct.pack('<%d%s' % (n, fmt), *value)
    raise ValueError(encoding)


def decode(encoding, data):
    if encoding == 'bytes':
        return data.hex()
    if encoding == 'str':
        return data.decode('utf-8')
    if encoding == 'int':
        return struct.unpack('<q', data)[0]
    if encoding in DTYPES:
        return struct.unpack('<' + DTYPES[encoding][0], data)[0]
    if encoding.startswith('ndarray'):
        parts = encoding.split(':')
        i = 0
        if len(parts) > 1 and parts[1]:
            dtype = parts[1]
        else:
            dtype = CODE_TO_DTYPE[data[0]]
            i = 1
        header = data[i]
        i += 1
        ndim, width = header >> 2, 1 << (header & 3)
        shape = [int.from_bytes(data[i + d * width:i + (d + 1) * width], 'little') for d in range(ndim)]
        i += ndim * width
        fmt, size, _ = DTYPES[dtype]
        count = 1
        for d in shape:
            count *= d
        return list(struct.unpack('<%d%s' % (count, fmt), data[i:i + count * size]))
    raise ValueError('unsupported encoding ' + encoding)


def size_of(encoding):
    if encoding == 'int':
        return 8
    if encoding in DTYPES:
        return DTYPES[encoding][1]
    return None


def write(folder):
    columns = {'label': 'int', 'raw': 'bytes', 'text': 'str', 'tokens': 'ndarray:int32'}
    names = sorted(columns)
    encodings = [columns[n] for n in names]
    sizes = [size_of(e) for e in encodings]
    config = {'column_encodings': encodings, 'column_names': names, 'column_sizes': sizes, 'compression': None,
              'format': 'mds', 'hashes': ['sha1'], 'size_limit': 600, 'version': 2}
    config_data = json.dumps(config, sort_keys=True).encode('utf-8')
    samples = []
    for k in range(23):
        samples.append({'label': k * 7 - 30, 'raw': bytes(range(k % 5)).hex(), 'text': 'sample %d: caf\u00e9 \u2603' % k,
                        'tokens': [(k * 31 + j * 17) % 50000 - 5 for j in range(1 + k % 9)]})
    os.makedirs(folder, exist_ok=True)
    shards, pending, pending_size = [], [], 8 + len(config_data)

    def flush():
        n = len(pending)
        offsets, offset = [], 4 + 4 * (n + 1) + len(config_data)
        for s in pending:
            offsets.append(offset)
            offset += len(s)
        offsets.append(offset)
        raw = struct.pack('<I', n) + struct.pack('<%dI' % (n + 1), *offsets) + config_data + b''.join(pending)
        name = 'shard.%05d.mds' % len(shards)
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(raw)
        entry = dict(config)
        entry.update({'raw_data': {'basename': name, 'bytes': len(raw), 'hashes': {'sha1': hashlib.sha1(raw).hexdigest()}},
                      'samples': n, 'zip_data': None})
        shards.append(entry)

    for sample in samples:
        head, body = b'', b''
        for name, encoding, size in zip(names, encodings, sizes):
            datum = encode(encoding, sample[name])
            if size is None:
                head += struct.pack('<I', len(datum))
            body += datum
        encoded = head + body
        if pending and config['size_limit'] < pending_size + len(encoded) + 4:
            flush()
            pending, pending_size = [], 8 + len(config_data)
        pending.append(encoded)
        pending_size += len(encoded) + 4
    if pending:
        flush()
    with open(os.path.join(folder, 'index.json'), 'w') as f:
        json.dump({'shards': shards, 'version': 2}, f, sort_keys=True)
    for sample in samples:
        print(json.dumps(sample, sort_keys=True))


def read(folder):
    with open(os.path.join(folder, 'index.json')) as f:
        index = json.load(f)
    assert index['version'] == 2
    for shard in index['shards']:
        assert shard['format'] == 'mds' and shard['zip_data'] is None, 'this reader reads uncompressed shards'
        with open(os.path.join(folder, shard['raw_data']['basename']), 'rb') as f:
            raw = f.read()
        assert len(raw) == shard['raw_data']['bytes']
        for algo, digest in shard['raw_data']['hashes'].items():
            if algo in ('sha1', 'sha256', 'md5'):
                assert hashlib.new(algo, raw).hexdigest() == digest, algo
        n = struct.unpack('<I', raw[:4])[0]
        assert n == shard['samples']
        offsets = struct.unpack('<%dI' % (n + 1), raw[4:4 + 4 * (n + 1)])
        names, encodings, sizes = shard['column_names'], shard['column_encodings'], shard['column_sizes']
        for k in range(n):
            data = raw[offsets[k]:offsets[k + 1]]
            i, lengths = 0, []
            for size in sizes:
                if size is None:
                    lengths.append(struct.unpack('<I', data[i:i + 4])[0])
                    i += 4
                else:
                    lengths.append(size)
            sample = {}
            for name, encoding, length in zip(names, encodings, lengths):
                sample[name] = decode(encoding, data[i:i + length])
                i += length
            print(json.dumps(sample, sort_keys=True))


if __name__ == '__main__':
    {'write': write, 'read': read}[sys.argv[1]](sys.argv[2])
