using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models.HuggingFace;

/// <summary>
/// Writes the safetensors format (huggingface/safetensors: an 8-byte little-endian header length, a JSON header
/// mapping each tensor name to its dtype, shape and byte range, then the raw little-endian tensor bytes), with the
/// <c>__metadata__</c> entry <c>{"format": "pt"}</c> that <c>transformers</c>' <c>from_pretrained</c> expects.
/// Reading uses TorchSharp.PyBridge's <c>Safetensors.LoadStateDict</c>; its writer has no metadata argument, hence this one.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>The safetensors dtype codes of the TorchSharp dtypes this writer accepts.</summary>
    public static string DtypeCode(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Float64 => "F64",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new NotSupportedException($"dtype {dtype} has no safetensors code."),
    };

    /// <summary>Writes <paramref name="tensors"/> (CPU or not; copied to CPU) to <paramref name="path"/>, replacing it.</summary>
    /// <param name="path">The file to write, e.g. <c>model.safetensors</c>.</param>
    /// <param name="tensors">Name → tensor; written in this order.</param>
    /// <param name="metadata">String metadata; <c>format: pt</c> is added when absent.</param>
    /// <exception cref="NotSupportedException">A tensor has a dtype without a safetensors code (e.g. complex).</exception>
    public static void Write(string path, IReadOnlyList<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        using var scope = torch.NewDisposeScope();
        var blobs = new List<byte[]>(tensors.Count);
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WritePropertyName("__metadata__");
            json.WriteStartObject();
            var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>());
            meta.TryAdd("format", "pt");
            foreach ((string key, string value) in meta)
            {
                json.WriteString(key, value);
            }

            json.WriteEndObject();
            long offset = 0;
            foreach ((string name, Tensor tensor) in tensors)
            {
                string code = DtypeCode(tensor.dtype);
                byte[] bytes = tensor.detach().cpu().contiguous().bytes.ToArray();
                if (!BitConverter.IsLittleEndian)
                {
                    throw new PlatformNotSupportedException("safetensors is little-endian; this writer runs on little-endian machines only.");
                }

                json.WritePropertyName(name);
                json.WriteStartObject();
                json.WriteString("dtype", code);
                json.WritePropertyName("shape");
                json.WriteStartArray();
                foreach (long d in tensor.shape)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WritePropertyName("data_offsets");
                json.WriteStartArray();
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes.Length;
                blobs.Add(bytes);
            }

            json.WriteEndObject();
        }

        // Pad the header with spaces to a multiple of 8 bytes so the data starts aligned (as the reference writer does).
        byte[] headerBytes = header.ToArray();
        int padded = (headerBytes.Length + 7) / 8 * 8;
        byte[] lengthPrefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(lengthPrefix, (ulong)padded);
        using FileStream file = File.Create(path);
        file.Write(lengthPrefix);
        file.Write(headerBytes);
        file.Write(Encoding.ASCII.GetBytes(new string(' ', padded - headerBytes.Length)));
        foreach (byte[] blob in blobs)
        {
            file.Write(blob);
        }
    }
}
