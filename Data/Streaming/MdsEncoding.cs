using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace ComposerSharp.Data.Streaming;

/// <summary>
/// One MDS column encoding, by MosaicML Streaming's names (streaming/base/format/mds/encodings.py): <c>bytes</c>,
/// <c>str</c>, <c>int</c> (int64), the numeric scalars (<c>int8</c> … <c>uint64</c>, <c>float16</c>/<c>32</c>/<c>64</c>),
/// <c>json</c>, and <c>ndarray[:dtype[:shape]]</c> (a static or dynamic dtype and shape, Streaming's four layouts).
/// The image and pickle encodings are refused: they need Python objects. Values are .NET objects: <c>byte[]</c>,
/// <c>string</c>, <c>long</c>/<c>int</c>/… scalars, and 1-D or N-D arrays given as a flat numeric array plus shape.
/// </summary>
public sealed class MdsEncoding
{
    private static readonly Dictionary<string, (int Size, int Code)> Scalars = new(StringComparer.Ordinal)
    {
        ["uint8"] = (1, 8), ["int8"] = (1, 9), ["uint16"] = (2, 16), ["int16"] = (2, 17), ["float16"] = (2, 18),
        ["uint32"] = (4, 32), ["int32"] = (4, 33), ["float32"] = (4, 34), ["uint64"] = (8, 64), ["int64"] = (8, 65), ["float64"] = (8, 66),
    };

    private MdsEncoding(string name, string kind, string? dtype, long[]? shape, int? size)
    {
        Name = name;
        Kind = kind;
        Dtype = dtype;
        Shape = shape;
        Size = size;
    }

    /// <summary>The encoding's text as it appears in <c>column_encodings</c>.</summary>
    public string Name { get; }

    /// <summary><c>bytes</c>, <c>str</c>, <c>int</c>, <c>json</c>, <c>scalar</c> or <c>ndarray</c>.</summary>
    public string Kind { get; }

    /// <summary>The element dtype of a scalar or a static-dtype ndarray (numpy's names), else null.</summary>
    public string? Dtype { get; }

    /// <summary>The static shape of an ndarray, else null.</summary>
    public IReadOnlyList<long>? Shape { get; }

    /// <summary>The fixed encoded size in bytes (<c>column_sizes</c>), or null when variable.</summary>
    public int? Size { get; }

    /// <summary>The encodings this reader and writer support, as Streaming names them.</summary>
    public static IReadOnlyList<string> Supported { get; } = new[] { "bytes", "str", "int", "json", "ndarray[:dtype[:shape]]" }.Concat(Scalars.Keys).ToArray();

    /// <summary>Parses an encoding name.</summary>
    /// <param name="name">E.g. <c>bytes</c>, <c>str</c>, <c>int</c>, <c>uint16</c>, <c>ndarray:int32</c>, <c>ndarray:uint16:2048</c>.</param>
    /// <returns>The encoding.</returns>
    /// <exception cref="NotSupportedException">The name is not a supported MDS encoding (the message lists the supported ones).</exception>
    public static MdsEncoding Parse(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        switch (name)
        {
            case "bytes":
            case "str":
            case "json":
                return new MdsEncoding(name, name, null, null, null);
            case "int":
                return new MdsEncoding(name, "int", "int64", null, 8);
        }

        if (Scalars.TryGetValue(name, out var scalar))
        {
            return new MdsEncoding(name, "scalar", name, null, scalar.Size);
        }

        if (name == "ndarray" || name.StartsWith("ndarray:", StringComparison.Ordinal))
        {
            string[] args = name == "ndarray" ? Array.Empty<string>() : name["ndarray:".Length..].Split(':');
            string? dtype = args.Length >= 1 && args[0].Length > 0 ? args[0] : null;
            if (args.Length > 2 || (dtype is not null && !Scalars.ContainsKey(dtype)))
            {
                throw Unsupported(name);
            }

            long[]? shape = null;
            if (args.Length == 2)
            {
                shape = args[1].Split(',').Select(d => long.TryParse(d, NumberStyles.None, CultureInfo.InvariantCulture, out long v) && v >= 1 ? v : throw Unsupported(name)).ToArray();
            }

            int? size = dtype is not null && shape is not null ? checked((int)(shape.Aggregate(1L, (a, b) => a * b) * Scalars[dtype].Size)) : null;
            return new MdsEncoding(name, "ndarray", dtype, shape, size);
        }

        throw Unsupported(name);
    }

    /// <summary>Encodes <paramref name="value"/> as this column's bytes.</summary>
    /// <param name="value">byte[] (bytes), string (str, json text), an integer (int, scalars), a numeric array (ndarray: flat values, with <paramref name="shape"/> for N-D).</param>
    /// <param name="shape">The ndarray's shape; null for 1-D.</param>
    /// <returns>The encoded bytes.</returns>
    /// <exception cref="ArgumentException">The value does not fit the encoding (type, dtype or static shape), or an ndarray is empty.</exception>
    public byte[] Encode(object value, long[]? shape = null)
    {
        ArgumentNullException.ThrowIfNull(value);
        switch (Kind)
        {
            case "bytes":
                return value as byte[] ?? throw new ArgumentException($"Column encoding 'bytes' takes a byte[]; got {value.GetType().Name}.", nameof(value));
            case "str":
            case "json":
                return Encoding.UTF8.GetBytes(value as string ?? throw new ArgumentException($"Column encoding '{Name}' takes a string; got {value.GetType().Name}.", nameof(value)));
            case "int":
            case "scalar":
                return EncodeScalar(Dtype!, value);
            default:
                return EncodeArray(value, shape);
        }
    }

    /// <summary>Decodes an ndarray column's bytes to its flat values as Int64 (integer dtypes only) and its shape.</summary>
    /// <param name="data">The column's bytes.</param>
    /// <returns>The values and shape.</returns>
    /// <exception cref="InvalidDataException">The bytes do not hold an integer array of this encoding.</exception>
    public (long[] Values, long[] Shape) DecodeIntegers(ReadOnlySpan<byte> data)
    {
        if (Kind == "bytes")
        {
            throw new InvalidOperationException("A 'bytes' column needs the integer dtype of its tokens; use DecodeIntegers(data, dtype).");
        }

        if (Kind != "ndarray")
        {
            throw new InvalidDataException($"Column encoding '{Name}' is not an array of integers.");
        }

        int index = 0;
        string dtype;
        if (Dtype is null)
        {
            byte code = data[index];
            dtype = Scalars.FirstOrDefault(kv => kv.Value.Code == code).Key ?? throw new InvalidDataException($"ndarray dtype code {code} is unknown.");
            index++;
        }
        else
        {
            dtype = Dtype;
        }

        long[] shape;
        if (Shape is null)
        {
            byte header = data[index++];
            int ndim = header >> 2, shapeBytes = 1 << (header & 3);
            shape = new long[ndim];
            for (int d = 0; d < ndim; d++, index += shapeBytes)
            {
                ReadOnlySpan<byte> s = data.Slice(index, shapeBytes);
                shape[d] = shapeBytes switch { 1 => s[0], 2 => BinaryPrimitives.ReadUInt16LittleEndian(s), 4 => BinaryPrimitives.ReadUInt32LittleEndian(s), _ => checked((long)BinaryPrimitives.ReadUInt64LittleEndian(s)) };
            }
        }
        else
        {
            shape = Shape.ToArray();
        }

        long[] values = DecodeIntegers(data[index..], dtype);
        if (values.Length != shape.Aggregate(1L, (a, b) => a * b))
        {
            throw new InvalidDataException($"ndarray of shape [{string.Join(", ", shape)}] holds {values.Length} values.");
        }

        return (values, shape);
    }

    /// <summary>Decodes raw little-endian integers of numpy dtype <paramref name="dtype"/> (a <c>bytes</c> column of token ids, llm-foundry's older layout).</summary>
    /// <param name="data">The bytes; their length must be a multiple of the dtype's size.</param>
    /// <param name="dtype">uint8, int8, uint16, int16, uint32, int32, uint64 or int64.</param>
    /// <returns>The values.</returns>
    /// <exception cref="InvalidDataException">The length is not a multiple of the size, or the dtype is not an integer dtype.</exception>
    public static long[] DecodeIntegers(ReadOnlySpan<byte> data, string dtype)
    {
        if (!Scalars.TryGetValue(dtype, out var info) || dtype.StartsWith("float", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"'{dtype}' is not an integer dtype; expected uint8, int8, uint16, int16, uint32, int32, uint64 or int64.");
        }

        if (data.Length % info.Size != 0)
        {
            throw new InvalidDataException($"{data.Length} bytes are not a whole number of {dtype} values ({info.Size} bytes each).");
        }

        var values = new long[data.Length / info.Size];
        for (int i = 0; i < values.Length; i++)
        {
            ReadOnlySpan<byte> s = data.Slice(i * info.Size, info.Size);
            values[i] = dtype switch
            {
                "uint8" => s[0],
                "int8" => (sbyte)s[0],
                "uint16" => BinaryPrimitives.ReadUInt16LittleEndian(s),
                "int16" => BinaryPrimitives.ReadInt16LittleEndian(s),
                "uint32" => BinaryPrimitives.ReadUInt32LittleEndian(s),
                "int32" => BinaryPrimitives.ReadInt32LittleEndian(s),
                "uint64" => checked((long)BinaryPrimitives.ReadUInt64LittleEndian(s)),
                _ => BinaryPrimitives.ReadInt64LittleEndian(s),
            };
        }

        return values;
    }

    /// <summary>Decodes a <c>str</c>, <c>json</c> or <c>int</c>/scalar column to a string or an Int64.</summary>
    /// <param name="data">The column's bytes.</param>
    /// <returns>A string (str, json) or a long (int and integer scalars).</returns>
    /// <exception cref="InvalidDataException">The column is of another kind.</exception>
    public object DecodeScalarOrString(ReadOnlySpan<byte> data) => Kind switch
    {
        "str" or "json" => Encoding.UTF8.GetString(data),
        "int" => BinaryPrimitives.ReadInt64LittleEndian(data),
        "scalar" when !Dtype!.StartsWith("float", StringComparison.Ordinal) => DecodeIntegers(data, Dtype)[0],
        _ => throw new InvalidDataException($"Column encoding '{Name}' is not a string or an integer."),
    };

    private static NotSupportedException Unsupported(string name) =>
        new($"Unknown or unsupported MDS column encoding '{name}'; supported: {string.Join(", ", Supported)} (image and pickle encodings need Python objects).");

    private static byte[] EncodeScalar(string dtype, object value)
    {
        if (dtype.StartsWith("float", StringComparison.Ordinal))
        {
            double v = Convert.ToDouble(value, CultureInfo.InvariantCulture);
            return dtype switch
            {
                "float16" => BitConverter.GetBytes((Half)v),
                "float32" => BitConverter.GetBytes((float)v),
                _ => BitConverter.GetBytes(v),
            };
        }

        // Two's complement little-endian: the low `size` bytes of the Int64 are the narrower integer's bytes.
        byte[] all = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(all, Convert.ToInt64(value, CultureInfo.InvariantCulture));
        return all[..Scalars[dtype].Size];
    }

    private static byte[] Bytes<T>(T[] values)
        where T : struct => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    private byte[] EncodeArray(object value, long[]? shape)
    {
        // Exact types: the runtime lets int[] pass as uint[] (and sbyte[] as byte[]), so a type pattern would pick the wrong dtype.
        (string dtype, byte[] raw, long count) = value.GetType() switch
        {
            Type t when t == typeof(byte[]) => ("uint8", (byte[])value, ((byte[])value).LongLength),
            Type t when t == typeof(sbyte[]) => ("int8", Bytes((sbyte[])value), ((sbyte[])value).LongLength),
            Type t when t == typeof(ushort[]) => ("uint16", Bytes((ushort[])value), ((ushort[])value).LongLength),
            Type t when t == typeof(short[]) => ("int16", Bytes((short[])value), ((short[])value).LongLength),
            Type t when t == typeof(uint[]) => ("uint32", Bytes((uint[])value), ((uint[])value).LongLength),
            Type t when t == typeof(int[]) => ("int32", Bytes((int[])value), ((int[])value).LongLength),
            Type t when t == typeof(ulong[]) => ("uint64", Bytes((ulong[])value), ((ulong[])value).LongLength),
            Type t when t == typeof(long[]) => ("int64", Bytes((long[])value), ((long[])value).LongLength),
            Type t when t == typeof(float[]) => ("float32", Bytes((float[])value), ((float[])value).LongLength),
            Type t when t == typeof(double[]) => ("float64", Bytes((double[])value), ((double[])value).LongLength),
            _ => throw new ArgumentException($"Column encoding '{Name}' takes a numeric array; got {value.GetType().Name}.", nameof(value)),
        };
        shape ??= new[] { count };
        if (count == 0)
        {
            throw new ArgumentException("An ndarray column cannot hold an empty array (Streaming refuses 0 elements).", nameof(value));
        }

        if (shape.Aggregate(1L, (a, b) => a * b) != count || shape.Any(d => d <= 0))
        {
            throw new ArgumentException($"The shape [{string.Join(", ", shape)}] does not hold {count} values.", nameof(shape));
        }

        var parts = new List<byte>();
        if (Dtype is null)
        {
            parts.Add((byte)Scalars[dtype].Code);
        }
        else if (Dtype != dtype)
        {
            throw new ArgumentException($"Column encoding '{Name}' holds {Dtype} values; got {dtype}.", nameof(value));
        }

        if (Shape is null)
        {
            long max = shape.Max();
            int code = max < (1 << 8) ? 0 : max < (1 << 16) ? 1 : max < (1L << 32) ? 2 : 3;
            parts.Add((byte)((shape.Length << 2) | code));
            foreach (long d in shape)
            {
                byte[] dim = new byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(dim, d);
                parts.AddRange(dim.Take(1 << code));
            }
        }
        else if (!Shape.SequenceEqual(shape))
        {
            throw new ArgumentException($"Column encoding '{Name}' holds arrays of shape [{string.Join(", ", Shape)}]; got [{string.Join(", ", shape)}].", nameof(shape));
        }

        parts.AddRange(raw);
        return parts.ToArray();
    }
}
