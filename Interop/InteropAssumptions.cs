using System.Runtime.InteropServices;
using TorchSharp;

namespace ComposerSharp.Interop;

/// <summary>
/// Every assumption this unit makes about libtorch and TorchSharp, checked at once so that an upgrade that breaks
/// one fails a test by name instead of corrupting memory or a model later: the enum values passed to C++ as
/// <c>int8_t</c>, TorchSharp's non-public fields, and the C++ and MKL symbols with a round trip through each.
/// </summary>
internal static class InteropAssumptions
{
    /// <summary>Checks each assumption; returns one message per broken one (empty when all hold).</summary>
    internal static IReadOnlyList<string> Check()
    {
        var problems = new List<string>();

        // c10::DeviceType and c10::ScalarType are int8_t enums; the function pointers pass TorchSharp's values.
        Expect(problems, (sbyte)DeviceType.CPU == 0 && (sbyte)DeviceType.CUDA == 1, $"TorchSharp's DeviceType CPU/CUDA are {(int)DeviceType.CPU}/{(int)DeviceType.CUDA}, not c10's 0/1.");
        Expect(problems, (sbyte)torch.ScalarType.Float16 == 5 && (sbyte)torch.ScalarType.BFloat16 == 15,
            $"TorchSharp's ScalarType Float16/BFloat16 are {(int)torch.ScalarType.Float16}/{(int)torch.ScalarType.BFloat16}, not c10's 5/15.");

        problems.AddRange(TorchSharpInternals.Problems());

        AutocastNative autocast = AutocastNative.Instance.Value;
        if (autocast.Error is not null)
        {
            problems.Add(autocast.Error);
        }
        else
        {
            bool wasEnabled = autocast.IsEnabled(DeviceType.CPU);
            torch.ScalarType wasDtype = autocast.GetDtype(DeviceType.CPU);
            autocast.SetDtype(DeviceType.CPU, torch.ScalarType.Float16);
            autocast.SetEnabled(DeviceType.CPU, !wasEnabled);
            bool roundTrip = autocast.IsEnabled(DeviceType.CPU) == !wasEnabled && autocast.GetDtype(DeviceType.CPU) == torch.ScalarType.Float16;
            autocast.SetEnabled(DeviceType.CPU, wasEnabled);
            autocast.SetDtype(DeviceType.CPU, wasDtype);
            Expect(problems, roundTrip, "libtorch's at::autocast functions resolved, but a value set on the CPU autocast state did not read back.");
        }

        if (!OperatingSystem.IsWindows())
        {
            Expect(problems, AtenContextNative.Instance.Value is not null, "libtorch's at::globalContext and its determinism switches (setDeterministicAlgorithms, …) were not found in torch_cpu.");
        }

        // libtorch's x64 packages bundle MKL; elsewhere (ARM) there is none, and no CNR to set.
        if (RuntimeInformation.ProcessArchitecture == Architecture.X64)
        {
            MklNative? mkl = MklNative.Instance.Value;
            Expect(problems, mkl is not null, "libtorch's bundled MKL does not export mkl_serv_cbwr_get/mkl_serv_cbwr_set.");
            if (mkl is not null)
            {
                int branch = mkl.GetBranch();
                Expect(problems, branch >= MklNative.BranchOff, $"MKL's CNR query answered {branch}, not a branch of mkl_cbwr.h.");
            }
        }

        return problems;
    }

    private static void Expect(List<string> problems, bool holds, string problem)
    {
        if (!holds)
        {
            problems.Add(problem);
        }
    }
}
