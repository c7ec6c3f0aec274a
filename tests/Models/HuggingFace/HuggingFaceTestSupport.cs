using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models.HuggingFace;

/// <summary>Small random models, inputs, a safetensors header reader and the Python runner shared by the Hugging Face tests.</summary>
internal static class HuggingFaceTestSupport
{
    internal const string Python = "/usr/bin/python3";

    internal static TransformerConfig Config(string preset) => TransformerConfig.Preset(preset) with
    {
        HiddenSize = 32,
        NumHeads = 4,
        IntermediateSize = 64,
        MaxSequenceLength = 24,
        VocabSize = 101,
        NumLayers = 2,
    };

    internal static TransformerModel Create(string kind) => kind switch
    {
        "bert_mlm" => new BertForMaskedLM(Config("bert-tiny")),
        "bert_cls" => new BertForSequenceClassification(Config("bert-tiny"), new SequenceClassificationOptions { NumLabels = 3 }),
        "bert_cls_mean" => new BertForSequenceClassification(Config("bert-tiny"), new SequenceClassificationOptions { NumLabels = 3, Pooling = SequencePooling.Mean }),
        "gpt2" => new GptForCausalLM(Config("gpt-tiny")),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "bert_mlm, bert_cls, bert_cls_mean or gpt2"),
    };

    /// <summary>Adds N(0, 0.1²) noise to every parameter, so that biases and LayerNorm affine parameters are not their trivial init and a mix-up shows.</summary>
    internal static void Perturb(nn.Module model)
    {
        using var noGrad = torch.no_grad();
        foreach (var p in model.parameters())
        {
            p.add_(torch.randn_like(p) * 0.1);
        }
    }

    /// <summary>Random ids in [0, 101), types in {0, 1}; for BERT, the last 3 positions of sample 0 are padding.</summary>
    internal static Dictionary<string, Tensor> Inputs(bool pad, long b = 2, long t = 9)
    {
        Tensor ids = torch.randint(0, 101, new[] { b, t }, dtype: ScalarType.Int64);
        Tensor mask = torch.ones(b, t, dtype: ScalarType.Int64);
        if (pad)
        {
            mask[0, TensorIndex.Slice(t - 3)] = 0;
        }

        return new Dictionary<string, Tensor>
        {
            ["input_ids"] = ids,
            ["attention_mask"] = mask,
            ["token_type_ids"] = torch.randint(0, 2, new[] { b, t }, dtype: ScalarType.Int64),
        };
    }

    internal static Tensor Logits(TransformerModel model, Dictionary<string, Tensor> inputs)
    {
        model.eval();
        using var noGrad = torch.no_grad();
        return model.call(new Batch(inputs));
    }

    /// <summary>Same dtype, shape and bytes.</summary>
    internal static bool Bitwise(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.contiguous().bytes.SequenceEqual(b.contiguous().bytes);

    /// <summary>The JSON header of a safetensors file, parsed independently of the writer.</summary>
    internal static JsonElement Header(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        return JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n)).RootElement.Clone();
    }

    /// <summary>Skips the test with the reason when Debian's Python cannot import torch and numpy.</summary>
    internal static void RequireTorchPython()
    {
        if (!File.Exists(Python))
        {
            Assert.Ignore($"{Python} is absent; install Debian's python3-torch and python3-numpy (apt-get install -y python3-torch python3-numpy) to run the independent Python check.");
        }

        (int code, string _, string err) = Run("-c \"import torch, numpy\"");
        if (code != 0)
        {
            Assert.Ignore($"{Python} cannot import torch and numpy ({err.Trim().Split('\n').LastOrDefault()}); install python3-torch and python3-numpy to run the independent Python check.");
        }
    }

    /// <summary>Runs the reference script with <paramref name="args"/> and returns its JSON output; fails the test on a non-zero exit.</summary>
    internal static JsonElement Reference(params string[] args)
    {
        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "Models", "HuggingFace", "hf_reference.py");
        (int code, string output, string error) = Run(string.Join(" ", new[] { script }.Concat(args).Select(a => $"\"{a}\"")));
        Assert.That(code, Is.Zero, $"hf_reference.py {string.Join(" ", args)} failed:\n{error}\n{output}");
        return JsonDocument.Parse(output.Trim().Split('\n').Last()).RootElement.Clone();
    }

    private static (int Code, string Output, string Error) Run(string arguments)
    {
        var start = new ProcessStartInfo(Python, arguments) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.Environment["OMP_NUM_THREADS"] = "1";
        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {Python}");
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{Python} {arguments} did not finish within 2 minutes.");
        }

        return (process.ExitCode, output.Result, error.Result);
    }
}
